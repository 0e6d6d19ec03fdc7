"""``python -m tuners run``: the JSON contract, and a clear error for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from tuners.__main__ import main
from tuners.configs import parse_overrides


def _run(capsys, *args):
    code = main(["run", *args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_the_json_contract(capsys, tmp_path, task_dir):
    path = tmp_path / "out" / "pez.json"
    code, out, _ = _run(
        capsys,
        "pez",
        "--preset",
        "smoke",
        "--set",
        f"task={task_dir}",
        "--set",
        "k_shot=null",
        "--set",
        "steps=2",
        "--json",
        str(path),
    )
    assert code == 0, out
    data = json.loads(path.read_text())
    assert {"tuner", "prompt_text", "prompt_ids", "metrics", "steps", "seed", "wall_s"} <= set(data)
    assert data["tuner"] == "pez" and data["steps"] == 2 and len(data["prompt_ids"]) == 3
    assert "task/acc_dev" in data["metrics"] and "prompt:" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pzz"], "unknown tuner 'pzz'. Did you mean 'pez'?"),
        (["pez", "--preset", "smok"], "unknown preset 'smok'. Did you mean 'smoke'?"),
        (["pez", "--set", "step=3"], "Did you mean 'steps'?"),
        (["pez", "--set", "steps=many"], "steps='many' has the wrong type"),
        (["pez", "--set", "prompt_len=0"], "prompt_len=0 must be >= 1"),
        (["pez", "--set", "lambda_ppl=-1"], "lambda_ppl=-1.0 must be >= 0"),
        (["pez", "--set", "template=middle"], "template='middle' is not one of"),
        (["pez", "--set", "nonsense"], "not of the form key=value"),
        (["pez", "--set", "model=no-such-model-xyz"], "Offline model assets: smollm2-135m, tiny-gpt2"),
        (["pez", "--set", "task=/no/such/folder"], "/no/such/folder"),
        (["pez", "--set", "init=text", "--set", "init_text= My rating: it is"], "quote it: init_text="),
    ],
)
def test_bad_input_is_a_clear_error(capsys, args, message):
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert message in err


def test_multi_token_verbalizer_shows_its_split(capsys, task_dir):
    code, _, err = _run(
        capsys,
        "pez",
        "--set",
        f"task={task_dir}",
        "--set",
        "k_shot=null",
        "--set",
        "verbalizer=[' terrible', ' fantastically']",
    )
    assert code == 2
    assert "' fantastically'" in err and "' fant'" in err


def test_label_out_of_range_names_the_file(capsys, tmp_path, task_dir):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(task_dir, folder)
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine film\t3\n")
    code, _, err = _run(capsys, "pez", "--set", f"task={folder}")
    assert code == 2 and "dev.tsv" in err and "3" in err


def test_tsv_without_expected_columns(capsys, tmp_path, task_dir):
    import shutil

    folder = tmp_path / "cols"
    shutil.copytree(task_dir, folder)
    (folder / "train.tsv").write_text("text\ty\nfine film\t1\n")
    code, _, err = _run(capsys, "pez", "--set", f"task={folder}")
    assert code == 2 and "train.tsv" in err and "sentence" in err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pez" in out and "lambda_ppl" in out and "smoke" in out


def test_unquoted_text_overrides_keep_their_spaces():
    # A prompt's leading space is a different BPE token; YAML alone would strip it.
    values = parse_overrides(["prompt_text= It was", 'quoted=" It is"', "steps=3", "lr= 0.1", "k_shot=null"])
    assert values == {"prompt_text": " It was", "quoted": " It is", "steps": 3, "lr": 0.1, "k_shot": None}
