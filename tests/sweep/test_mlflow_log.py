"""A trial's MLflow run across attempts: what a retried attempt finds and completes."""

from __future__ import annotations

import pytest

from sweep import mlflow_log


def test_a_retry_logs_the_parameters_its_first_attempt_died_before_logging(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment, parent = mlflow_log.start_parent(
        uri, "retry", params={"a": 1}, objectives=["task/acc_dev"], artifact_root=tmp_path / "artifacts"
    )
    trial = dict(
        tracking_uri=uri,
        experiment_id=experiment,
        parent_run_id=parent,
        tuner="synthetic",
        key="k1",
        suggestion={"params": {"lambda_ppl": 0.5}},
        params={"lambda_ppl": 0.5, "steps": 10, "problem": {"task": "t"}},
        searched=["lambda_ppl"],
        tags={},
    )
    real = mlflow_log.log_params

    def dies(*args: object, **kwargs: object) -> None:
        raise OSError("the worker's connection dropped")

    monkeypatch.setattr(mlflow_log, "log_params", dies)
    with pytest.raises(OSError):  # the first attempt created its run, then died logging its parameters
        mlflow_log.TrialRun(trial_id="t1", **trial)
    monkeypatch.setattr(mlflow_log, "log_params", real)
    existing = mlflow_log.find_trial_run(uri, experiment, parent, "k1")
    assert existing is not None and existing.data.params == {}
    run = mlflow_log.TrialRun(trial_id="t2", existing=existing, **trial)
    assert run.attempts == 2
    params = run.client.get_run(run.run_id).data.params
    assert params == {"lambda_ppl": "0.5", "steps": "10", "problem.task": "t"}
    # A third attempt finds every parameter logged and logs none again (MLflow refuses a changed value).
    third = mlflow_log.find_trial_run(uri, experiment, parent, "k1")
    again = mlflow_log.TrialRun(trial_id="t3", existing=third, **trial)
    assert again.client.get_run(again.run_id).data.params == params
