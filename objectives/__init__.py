"""What a prompt is measured by, below the tuners: tasks, models, the prompted scorer and the metrics.

Where things live: ``tasks.py`` (datasets, k-shot splits, templates, verbalizers), ``assets.py`` and
``models.py`` (offline assets, model loading, devices), ``problem.py`` (``ProblemConfig``, the fields every
tuner shares, and ``build_problem``), ``scoring.py`` (the scorer with its frozen input cache),
``evaluation.py`` (a prompt's final metrics), ``metrics.py`` (the registered metrics and their directions),
``fluent.py`` (the LM's top-k next tokens, LM-sampled prompts), ``memory.py`` (a trial's memory estimate),
``stats.py`` (replicate means and intervals), ``errors.py`` (``UserError`` and kin, one did-you-mean).
"""
