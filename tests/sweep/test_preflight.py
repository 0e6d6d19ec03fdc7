"""Bad input fails on the driver, in seconds, before any cluster starts, with exit code 2 and nothing left behind."""

from __future__ import annotations

import time

import pytest

from sweep.run import main
from tests.conftest import write_tsv


@pytest.fixture
def bad_label_dir(tmp_path):
    folder = tmp_path / "badlabel"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        write_tsv(folder / name, [("fine", 0), ("great", 1), ("odd", 5)])
    return folder


CASES = [
    (["--set", "problem.task=/nonexistent/sst-2/16-1"], "does not exist"),
    (["--set", "problem.verbalizer=[' terrible', ' magnificently']"], "splits into"),
    (["--set", "problem.model=/nonexistent/model"], "the folder '/nonexistent/model' does not exist"),
    (["--set", "problem.model=gpt2-tokenizer"], "is a tokenizer asset, not a model"),
    (["--set", "problem.device=cuda"], "gpus_per_trial=0"),
    (["--set", "problem.device=gpu7"], "is not a device"),
    (["--set", "tuners=[pez"], "is not valid YAML"),
    (["--set", "cpus_per_trial=abc"], "cpus_per_trial='abc' has the wrong type"),
    (["--set", "num_samples=true"], "num_samples=True has the wrong type"),
    (["--set", "tuner_config.pez.lambda_ppl=.nan"], "must be a finite number"),
    (["--set", "search.pez.lambda_ppl=abc"], "must be [low, high], two numbers"),
    (["--set", "tracking_uri=sqlite:////nonexistent/dir/m.db"], "does not exist; create it"),
    (["--set", "tracking_uri=bogus"], "is not an MLflow store"),
    (["--set", "tracking_uri=http://127.0.0.1:9"], "no MLflow server answered"),
    (["--set", "manual_prompts=[]"], "must be a non-empty list"),
    (["--set", "baselines=[no_prompt, manul]"], "Did you mean 'manual'?"),
    (["--set", "replicates=0"], "replicates=0 must be in [1, 100]"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[c[1][:30] for c in CASES])
def test_bad_input_is_a_clear_error_in_seconds(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    start = time.time()
    assert main(["--preset", "smoke", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert time.time() - start < 10
    assert not out.exists()


def test_bad_labels_and_bad_output_folders(bad_label_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--preset", "smoke", "--out", str(out), "--set", f"problem.task={bad_label_dir}"]) == 2
    assert "label '5' is not an integer in [0, 2)" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--preset", "smoke", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["--preset", "smoke", "--out", "/proc/promptsweep/out"]) == 2
    assert "cannot write into '/proc'" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("num_samples: [1\n")
    assert main(["--preset", "smoke", "--out", str(out), "--config", str(config)]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err
    assert not out.exists()


def test_export_cli_errors(tmp_path, capsys):
    from sweep.export import main as export

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--tracking-uri", uri, "--out", str(tmp_path / "x")]
    assert export(["--tracking-uri", "bogus", "--experiment", "e", "--out", str(tmp_path)]) == 2
    assert "is not an MLflow store" in capsys.readouterr().err
    assert export([*args, "--experiment", "nothing"]) == 2
    assert "no such MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # a mistyped store is reported, not created
    import mlflow

    mlflow.MlflowClient(uri).search_experiments()  # an empty store
    assert export([*args, "--experiment", "nothing"]) == 2
    assert "no MLflow experiment named 'nothing'" in capsys.readouterr().err
    assert export([*args, "--experiment", "e", "--parent-run-id", "abc", "--objectives", "task/acc_dve,x"]) == 2
    assert "Did you mean 'task/acc_dev'?" in capsys.readouterr().err


def test_free_space_counts_what_a_resumed_sweep_already_wrote(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import sweep.preflight as pf
    from objectives.errors import ResourceError
    from sweep.config import load_sweep_config

    monkeypatch.delenv(pf.SKIP_SPACE_ENV, raising=False)
    config = load_sweep_config("smoke", config_file=None, overrides={})
    needed = int(pf.SPACE_SAFETY * pf.estimate_bytes(config, {"tiny-gpt2": 64}))
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: SimpleNamespace(free=needed - (1 << 20)))
    with pytest.raises(ResourceError, match=r"needs about \d+ MB more .* but only \d+ MB are free .* choose an --out"):
        pf.check_free_space(config, tmp_path / "out", {"tiny-gpt2": 64})
    (tmp_path / "out").mkdir()
    with (tmp_path / "out" / "mlflow.db").open("wb") as handle:
        handle.truncate(2 << 20)  # sparse: 2 MB already written by the interrupted run, no disk used here
    pf.check_free_space(config, tmp_path / "out", {"tiny-gpt2": 64})
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    monkeypatch.setenv(pf.SKIP_SPACE_ENV, "1")
    pf.check_free_space(config, tmp_path / "out", {"tiny-gpt2": 64})


def test_the_tiny_gpt2_sizes_the_preflight_reads_are_the_models():
    from objectives.models import tiny_gpt2
    from sweep.preflight import model_config

    built, read = tiny_gpt2().config, model_config("tiny-gpt2")
    assert (read.max_position_embeddings, read.hidden_size) == (built.max_position_embeddings, built.hidden_size)
