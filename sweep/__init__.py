"""The sweep engine: Ray Tune trials of the tuners, Optuna multi-objective search, MLflow, Pareto exports."""
