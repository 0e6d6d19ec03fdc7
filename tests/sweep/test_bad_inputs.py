"""Every bad input of issue 16 is a clear error: exit 2, ``error: ...`` naming the value and the fix, in seconds,
before Ray starts and before anything is written.

One table drives all of it. A case names the command line (``sweep/run.py``, ``python -m tuners`` or
``python -m sweep.export``), its arguments with ``{placeholders}``, an optional setup that builds what they
name (a broken task folder, a config file, an HTTP server that is not MLflow), and a fragment of the message.
The placeholders every case has: ``{out}`` (the output folder, which must not exist afterwards) and ``{task}``
(the shared tiny task folder).
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest

from tests.conftest import NEGATIVE, POSITIVE, write_tsv

Setup = Callable[[Path, contextlib.ExitStack, pytest.MonkeyPatch], dict[str, str]]
TINY = ["--set", "problem.task={task}", "--set", "problem.k_shot=null"]  # the smoke sweep on the tiny task


class Case(NamedTuple):
    id: str
    cli: str  # "sweep", "tuners" or "export"
    args: list[str]
    message: str
    setup: Setup | None = None


# ----- setups: each returns the placeholders it adds -------------------------------------------------------


def _task_folder(tmp: Path, train: bytes | None = None, rows: list[tuple[str, int]] | None = None) -> Path:
    """A copy of the tiny task with its train.tsv replaced by ``train`` (raw bytes) or ``rows``; dev and test too
    when ``rows`` is given for all (``_every_split``)."""
    folder = tmp / "bad-task"
    pos, neg = [(s, 1) for s in POSITIVE], [(s, 0) for s in NEGATIVE]
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        folder.mkdir(exist_ok=True)
        write_tsv(folder / name, pos[:3] + neg[:3])
    if train is not None:
        (folder / "train.tsv").write_bytes(train)
    if rows is not None:
        write_tsv(folder / "train.tsv", rows)
    return folder


def _bad_train(train: bytes | None = None, rows: list[tuple[str, int]] | None = None) -> Setup:
    return lambda tmp, stack, mp: {"bad": str(_task_folder(tmp, train, rows))}


def _every_split(rows: list[tuple[str, int]]) -> Setup:
    def setup(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
        folder = _task_folder(tmp)
        for name in ("train.tsv", "dev.tsv", "test.tsv"):
            write_tsv(folder / name, rows)
        return {"bad": str(folder)}

    return setup


def _config_file(text: str) -> Setup:
    def setup(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
        (tmp / "sweep.yaml").write_text(text)
        return {"cfg": str(tmp / "sweep.yaml")}

    return setup


def _model_without_weights(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
    from transformers import GPT2Config

    folder = tmp / "model"
    GPT2Config(n_layer=1, n_embd=8, n_head=1).save_pretrained(folder)  # config.json, and no weights
    return {"model": str(folder)}


class _NotMLflow(http.server.BaseHTTPRequestHandler):
    """Answers /health as MLflow does, and 404 to everything else: a web server on the wrong port."""

    def do_GET(self) -> None:  # the name http.server calls
        code = 200 if self.path == "/health" else 404
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"OK" if code == 200 else b"<html>Not Found</html>")

    def log_message(self, *args: object) -> None:
        pass


def _http_server(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotMLflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stack.callback(thread.join)
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return {"uri": f"http://127.0.0.1:{server.server_address[1]}"}


def _small_disk(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
    import sweep.preflight

    mp.delenv(sweep.preflight.SKIP_SPACE_ENV, raising=False)
    mp.setattr(
        sweep.preflight.shutil, "disk_usage", lambda path: SimpleNamespace(total=10 << 20, used=7 << 20, free=3 << 20)
    )
    return {}


def _a_folder(tmp: Path, stack: contextlib.ExitStack, mp: pytest.MonkeyPatch) -> dict[str, str]:
    (tmp / "configs").mkdir()
    return {"dir": str(tmp / "configs")}


LONG_LINE = b"sentence\tlabel\n" + b"a" * 360_000 + b"\t1\n"
LATIN1 = "sentence\tlabel\ncaf\u00e9 au lait , lovely\t1\nbad\t0\n".encode("latin-1")
BINARY = b"sentence\tlabel\n\x00\x01\x02\xff\xfe\t1\n"
LONG_REVIEW = [(" ".join(["great"] * 300), 1), ("bad", 0)]  # 300 tokens: more than tiny-gpt2's 256 positions


CASES = [
    # hangs: refused in the config or the preflight, with bounds
    Case("num_samples-huge", "sweep", ["--set", "num_samples=1000000000"], "num_samples=1000000000 must be in [1,"),
    Case("replicates-huge", "sweep", ["--set", "replicates=100000"], "replicates=100000 must be in [1, 100]"),
    Case(
        "prompt_len-huge",
        "sweep",
        [*TINY, "--set", "problem.prompt_len=100000"],
        "prompt_len=100000 does not fit model 'tiny-gpt2': it has 256 positions",
    ),
    Case(
        "input-longer-than-model",
        "sweep",
        ["--set", "problem.task={bad}", "--set", "problem.k_shot=null"],
        "has an input of 300 tokens",
        _bad_train(rows=LONG_REVIEW),
    ),
    # the scheduler's fields
    Case("scheduler-typo", "sweep", ["--set", "scheduler=moasha"], "Did you mean 'mo_asha'?"),
    Case("reduction-factor-one", "sweep", ["--set", "reduction_factor=1"], "reduction_factor=1.0 must be a number > 1"),
    Case("grace-zero", "sweep", ["--set", "grace_steps=0"], "grace_steps=0 must be >= 1 step"),
    # raw tracebacks
    Case("tuners-twice", "sweep", ["--set", "tuners=[pez, pez]"], "tuners=['pez', 'pez'] lists 'pez' more than once"),
    Case("seed-negative", "sweep", ["--set", "seed=-1"], "seed=-1 must be in [0, 4294967295]"),
    Case("problem-seed-negative", "sweep", ["--set", "problem.seed=-1"], "seed=-1 must be in [0, 4294967295]"),
    Case("ray_num_cpus-negative", "sweep", ["--set", "ray_num_cpus=-1"], "ray_num_cpus=-1: the embedded Ray needs"),
    Case(
        "tracking-uri-not-mlflow",
        "sweep",
        ["--set", "tracking_uri={uri}"],
        "is an HTTP server but not an MLflow tracking server",
        _http_server,
    ),
    Case(
        "task-latin1",
        "sweep",
        ["--set", "problem.task={bad}"],
        "train.tsv, line 2: byte 0xe9 is not UTF-8 text",
        _bad_train(LATIN1),
    ),
    Case("task-binary", "sweep", ["--set", "problem.task={bad}"], "train.tsv, line 2: a NUL byte", _bad_train(BINARY)),
    Case(
        "task-360kb-line",
        "sweep",
        ["--set", "problem.task={bad}"],
        "train.tsv, line 2: field larger than field limit",
        _bad_train(LONG_LINE),
    ),
    Case("tuners-cli-latin1", "tuners", ["--set", "task={bad}"], "byte 0xe9 is not UTF-8 text", _bad_train(LATIN1)),
    Case("tuners-cli-binary", "tuners", ["--set", "task={bad}"], "a NUL byte", _bad_train(BINARY)),
    Case("tuners-cli-360kb-line", "tuners", ["--set", "task={bad}"], "field larger than", _bad_train(LONG_LINE)),
    Case(
        "tuners-cli-prompt_len-huge",
        "tuners",
        ["--set", "task={task}", "--set", "k_shot=null", "--set", "prompt_len=100000"],
        "prompt_len=100000 does not fit model 'tiny-gpt2'",
    ),
    Case("tuners-cli-seed-negative", "tuners", ["--set", "seed=-1"], "seed=-1 must be in [0, 4294967295]"),
    Case(
        "tuners-cli-model-without-weights",
        "tuners",
        ["--set", "task={task}", "--set", "k_shot=null", "--set", "model={model}"],
        "has a config.json but no weights",
        _model_without_weights,
    ),
    # misleading messages
    Case("lr-nan", "sweep", ["--set", "tuner_config.pez.lr=nan"], "lr='nan' must be a finite number"),
    Case("lr-inf", "sweep", ["--set", "tuner_config.pez.lr=inf"], "lr='inf' must be a finite number"),
    Case("tuners-cli-lr-nan", "tuners", ["--set", "lr=nan"], "lr='nan' must be a finite number"),
    Case("search-bound-nan", "sweep", ["--set", "search.pez.lambda_ppl=[nan, 1]"], "bounds must be finite numbers"),
    Case(
        "ray_num_cpus-zero", "sweep", ["--set", "ray_num_cpus=0"], "ray_num_cpus=0: the embedded Ray needs at least 1"
    ),
    Case(
        "ray_num_cpus-below-cpus_per_trial",
        "sweep",
        [*TINY, "--set", "ray_num_cpus=1", "--set", "cpus_per_trial=2"],
        "no trial could start in the embedded Ray",
    ),
    Case(
        "tuners-space-separated", "sweep", ["--set", "tuners=pez soft"], "separate names by commas: tuners=[pez, soft]"
    ),
    Case("config-is-a-folder", "sweep", ["--config", "{dir}"], "is a folder; give the path of a YAML file", _a_folder),
    Case(
        "model-without-weights",
        "sweep",
        [*TINY, "--set", "problem.model={model}"],
        "has a config.json but no weights",
        _model_without_weights,
    ),
    Case(
        "export-missing-sqlite",
        "export",
        ["--tracking-uri", "sqlite:///{out}/mlflow.db", "--experiment", "smoke", "--out", "{out}"],
        "no such MLflow store",
    ),
    Case(
        "export-not-mlflow",
        "export",
        ["--tracking-uri", "{uri}", "--experiment", "smoke", "--out", "{out}"],
        "not an MLflow tracking server",
        _http_server,
    ),
    # accepted with a changed meaning, now refused
    Case(
        "objectives-twice",
        "sweep",
        ["--set", "objectives=[task/acc_dev, task/acc_dev]"],
        "lists 'task/acc_dev' more than once",
    ),
    Case("search-not-a-knob", "sweep", ["--set", "search.pez.lr=[0.01, 1]"], "lr cannot be searched"),
    Case(
        "config-duplicated-key",
        "sweep",
        ["--config", "{cfg}"],
        "key 'num_samples' is given twice in one table (lines 1 and 3)",
        _config_file("num_samples: 3\nreplicates: 1\nnum_samples: 5\n"),
    ),
    Case(
        "override-duplicated-key",
        "sweep",
        ["--set", "problem={{k_shot: 2, k_shot: 4}}"],  # braces doubled: args go through str.format
        "gives key 'k_shot' twice",
    ),
    Case(
        "train-one-class",
        "sweep",
        ["--set", "problem.task={bad}", "--set", "problem.k_shot=null"],
        "train.tsv has no example of class 1 (its labels: 0)",
        _bad_train(rows=[(s, 0) for s in NEGATIVE]),
    ),
    Case(
        "three-words-on-binary",
        "sweep",
        [*TINY, "--set", "problem.verbalizer=[' terrible', ' great', ' okay']"],
        "no example of class 2 (its labels: 0, 1); every split needs every class. Check the data, or the verbalizer",
    ),
    Case(
        "every-split-one-class",
        "sweep",
        ["--set", "problem.task={bad}", "--set", "problem.k_shot=null"],
        "has no example of class 0",
        _every_split([(s, 1) for s in POSITIVE]),
    ),
    Case(
        "every-sentence-empty",
        "sweep",
        ["--set", "problem.task={bad}", "--set", "problem.k_shot=null"],
        "every sentence is empty",
        _every_split([("", 0), ("", 1), (" ", 0), ("", 1)]),
    ),
    # free space (issue 16, item 2)
    Case("disk-too-small", "sweep", TINY, "MB are free on the disk of", _small_disk),
]


def _main(cli: str) -> Callable[[list[str]], int]:
    if cli == "sweep":
        from sweep.run import main
    elif cli == "tuners":
        from tuners.__main__ import main
    else:
        from sweep.export import main
    return main


def _argv(case: Case, names: dict[str, str]) -> list[str]:
    args = [arg.format(**names) for arg in case.args]
    if case.cli == "sweep":
        return ["--preset", "smoke", "--out", names["out"], *args]
    if case.cli == "tuners":
        return ["run", "pez", "--quiet", *args]
    return args


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_before_ray(case: Case, task_dir, tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    names = {"out": str(tmp_path / "out"), "task": str(task_dir)}
    with contextlib.ExitStack() as stack:
        if case.setup is not None:
            names.update(case.setup(tmp_path, stack, monkeypatch))
        start = time.time()
        code = _main(case.cli)(_argv(case, names))
        seconds = time.time() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert case.message in err, err
    assert err.count("Traceback") == 0
    assert seconds < 15
    assert not ray.is_initialized()
    assert not Path(names["out"]).exists()  # nothing written: not the sweep's folder, not an export's store


def test_a_range_yaml_reads_as_text_is_accepted():
    """``[1e-3, 10]``: YAML 1.1 reads 1e-3 (no dot) as text; a search bound can only mean the number."""
    from sweep.config import load_sweep_config
    from tuners.configs import parse_overrides

    overrides = parse_overrides(["search.pez.lambda_ppl=[1e-3, 10]", "search.pez.fluent_top_k=[8, 64]"])
    config = load_sweep_config("smoke", config_file=None, overrides=overrides)
    assert config.search["pez"]["lambda_ppl"] == (0.001, 10)
    assert config.search["pez"]["fluent_top_k"] == (8, 64)


def test_the_presets_fit_a_disk_with_a_few_gb():
    """The free-space estimate stays well under a few GB for every preset (paper: its RLPrompt checkpoints)."""
    from sweep.config import load_sweep_config
    from sweep.preflight import SPACE_SAFETY, estimate_bytes

    sizes = {"tiny-gpt2": 64, "smollm2-135m": 576, "gpt2": 768, "distilgpt2": 768}
    needed = {
        preset: SPACE_SAFETY * estimate_bytes(load_sweep_config(preset, config_file=None, overrides={}), sizes) / 2**20
        for preset in ("smoke", "demo", "paper")
    }
    assert needed["smoke"] < 100 and needed["demo"] < 500 and needed["paper"] < 5000, needed
