"""Tests of report.html: a self-contained page with every trial, NaN-proof data, learning curves from MLflow,
and the smoke sweep's report rendered by a real headless browser (Debian's ``chromium``)."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from objectives.stats import aggregate
from sweep import mlflow_log
from sweep.mlflow_log import collect_curves
from sweep.results.columns import STEPS_DONE, STOPPED_AT
from sweep.results.exports import write_exports
from sweep.results.pareto import compute_fronts
from sweep.results.report import REPORT_FILE, write_report
from sweep.results.report_data import compute_report

OBJECTIVES = ("task/acc_dev", "interp/scrutability")
NAN = float("nan")
INF = float("inf")
HOSTILE = "</script><script>alert(1)</script> & <b>"
SCREENSHOT_COPY = Path("/tmp/report_screenshot.png")


def _trial(tuner: str, prompt: str, dev: list, test: list, scr: list, **extra: object) -> dict:
    """A row with R = 3 replicates of each metric (mean, std, ci95, r<i>), like the sweep's rows."""
    metrics = {"task/acc_dev": dev, "task/acc_test": test, "interp/scrutability": scr}
    metrics["interp/log_ppl"] = [-v for v in scr]
    metrics["interp/repeat_frac"] = [extra.pop("repeat", 0.0)] * 3
    metrics["interp/special_frac"] = [0.0] * 3
    rows = [{k: v[i] for k, v in metrics.items()} for i in range(3)]
    return {
        "tuner": tuner,
        "prompt_text": prompt,
        "prompt_ids": [1, 2],
        "replicate_prompts": [prompt] * 3,
        **aggregate(rows),
        **extra,
    }


def _table() -> pd.DataFrame:
    lam = "param/lambda_ppl"
    rows = [
        _trial("pez", " great movie", [0.8, 0.82, 0.84], [0.79, 0.8, 0.81], [-5.0, -5.2, -5.1], **{lam: 0.0}),
        _trial("pez", HOSTILE, [0.7, 0.71, 0.69], [0.7, 0.69, 0.71], [-3.0, -3.1, -2.9], **{lam: 0.5}),
        _trial("pez", "the the the", [0.6, 0.6, 0.6], [0.5, 0.6, 0.55], [-2.0, -2.0, -2.1], repeat=0.67),
        _trial("soft", "tab\there\n", [0.75, 0.7, 0.72], [0.7, 0.7, 0.7], [-4.0, -4.5, -4.2], **{lam: INF}),
        _trial("soft", "no dev", [0.6, 0.6, 0.6], [0.6, 0.6, 0.6], [-4.0, -4.0, -4.0], **{lam: NAN}),
        _trial("no_prompt", "", [0.5, 0.5, 0.5], [0.5, 0.52, 0.5], [0.0, 0.0, 0.0]),
        _trial("manual", " It was", [0.6, 0.62, 0.61], [0.6, 0.6, 0.62], [-6.0, -6.1, -6.0]),
    ]
    for index, row in enumerate(rows):
        row["trial_id"], row["mlflow_run_id"] = f"t{index}", f"run{index}"
    table = pd.DataFrame(rows)
    # What a broken metric leaves: no test accuracy, no dev accuracy, an infinite interval and log-perplexity.
    table.loc[3, ["task/acc_test", "task/acc_test.ci95"]] = NAN
    table.loc[4, "task/acc_dev"] = NAN
    table.loc[4, "interp/log_ppl"] = INF
    table.loc[0, "interp/scrutability.ci95"] = INF
    return table


def _stopped_table() -> pd.DataFrame:
    """:func:`_table` with how far each trial got, and two trials a scheduler stopped at step 4: a pez one better
    on both dev objectives than every full-budget trial (on any front it would lead), and a gamed soft one."""
    table = _table().assign(**{STEPS_DONE: 20.0, STOPPED_AT: NAN})
    stopped = [
        _trial("pez", " stopped early", [0.95] * 3, [0.9] * 3, [-1.0] * 3, **{"param/lambda_ppl": 2.0}),
        _trial("soft", "cut cut cut", [0.5] * 3, [0.5] * 3, [-7.0, -7.1, -6.9], repeat=0.8),
    ]
    for index, row in enumerate(stopped):
        row.update(trial_id=f"s{index}", mlflow_run_id=f"srun{index}", **{STEPS_DONE: 4.0, STOPPED_AT: 4.0})
    return pd.concat([table, pd.DataFrame(stopped)], ignore_index=True)


def _views(path: Path) -> dict:
    _, page = _parse(path)
    return _strict_json(page.payload or "")["views"]


class _Page(HTMLParser):
    """The page's tags: every src/href, every <script>'s attributes, and the JSON payload's text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.payload: str | None = None
        self._in_payload = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data")]
        if tag == "script":
            self.scripts.append(values)
            self._in_payload = values.get("id") == "report-data"
        if tag == "link":
            self.links.append(values.get("href") or "")

    def handle_data(self, data: str) -> None:
        if self._in_payload:
            self.payload = (self.payload or "") + data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_payload = False


def _parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def _strict_json(text: str) -> dict:
    def no_constant(name: str) -> None:
        raise AssertionError(f"the page's JSON holds {name}, which JSON does not allow")

    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    table = _table()
    curves = {
        "run0": {"rep0/dev/acc": [(0, 0.5), (5, NAN), (10, 0.8)], "rep1/dev/acc": [(0, 0.4), (10, INF)]},
        "run1": {"rep0/train/ce": [(1, 2.0), (2, 1.5)]},
        "no-such-run": {"rep0/dev/acc": [(0, 1.0)]},
    }
    header = {
        "experiment": "unit",
        "config": {"name": "unit", "num_samples": 3, "objectives": list(OBJECTIVES), "weird": NAN},
        "versions": {"python": "3.11.7", "plotly": "7.1.0"},
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "timings": {"tune_s": 67.0, "total_s": 3725.0},
        "status": "FINISHED",
        "trials_expected": 8,
        "trials_finished": 7,
        "trials_failed": 1,
        "summary_metrics": {"stale": 1.0},
    }
    out = tmp_path_factory.mktemp("report")
    result = write_exports(table, out, OBJECTIVES, curves=curves, header=header)
    return out, result, table


def test_report_data_is_what_the_page_shows_without_html():
    table = _table()
    header = {"experiment": "unit", "timings": {"total_s": 75.4}, "git_commit": "abc", "summary_metrics": {}}
    data = compute_report(table, compute_fronts(table, OBJECTIVES), curves=None, header=header)
    assert data.title == "Sweep unit report" and data.initial == 0  # the best dev accuracy on the overall front
    assert list(data.styles) == ["pez", "soft", "no_prompt", "manual"]
    assert [(s.label, s.marker) for s in data.styles.values()][2:] == [("no prompt", "o"), ("hand-written", "*")]
    assert ("timings", "total 1 min 15 s", False) in data.header.facts and (
        "git commit",
        "abc",
        True,
    ) in data.header.facts
    assert data.header.volumes[0] == ("tuner", "hypervolume") and data.header.volumes[-1][0] == "all tuners"
    hostile, gamed, tab, no_dev, no_prompt = (data.trials[i] for i in (1, 2, 3, 4, 5))
    assert hostile.prompt == HOSTILE and hostile.weights == (("lambda_ppl", "0.5"),)  # raw text: the page escapes
    assert hostile.on_front and hostile.on_front_all and not hostile.gamed
    assert gamed.gamed and gamed.gamed_signals == "repeat_frac 0.67, special_frac 0.00"
    assert tab.weights == () and tab.values["task/acc_test"] == "–"  # an infinite weight and a NaN accuracy
    assert not no_dev.on_front and no_dev.values["task/acc_dev"] == "–"
    assert no_prompt.label == "no prompt" and not no_prompt.on_front
    assert no_prompt.values["interp/scrutability"] == "–" and no_prompt.values["task/acc_dev"] == "0.500 ± 0.000"
    assert data.no_prompt_row == {"test": 5, "dev": 5}
    # The trials table: (sort key, text) per column, numbers sorted by value and missing ones by "".
    columns = [name for name, _ in data.columns]
    assert columns[:4] == ["tuner", "trial", "prompt", "lambda_ppl"] and columns[-4:] == [
        "front",
        "all",
        "gamed",
        "beats",
    ]
    assert data.trials[0].cells[columns.index("task/acc_dev ↑")] == (repr(0.82), "0.820 ± 0.050")
    assert tab.cells[columns.index("task/acc_test ↑")] == ("", "–")


def test_report_data_lists_stopped_trials_and_places_them_on_no_front():
    table = _stopped_table()
    full, stopped = table.iloc[:7], table.iloc[7:]
    fronts = compute_fronts(full, OBJECTIVES)
    header = {"trials_finished": 9, "trials_stopped": 2}
    data = compute_report(full, fronts, curves=None, header=header, stopped=stopped)
    alone = compute_report(full, fronts, curves=None, header={})
    assert len(data.trials) == 9 and [t.stopped_at for t in data.trials] == [None] * 7 + [4, 4]
    early, cut = data.trials[7], data.trials[8]
    assert early.prompt == " stopped early" and early.steps_done == "4" and data.trials[0].steps_done == "20"
    assert not (early.on_front or early.on_front_all) and cut.gamed and not cut.on_front
    # The fronts, figures and the first trial shown are the full-budget trials' alone.
    for view in ("test", "dev"):
        mine, theirs = data.plots[view], alone.plots[view]
        assert [s.rows.tolist() for s in mine.series] == [s.rows.tolist() for s in theirs.series]
        assert [s.front.tolist() for s in mine.series] == [s.front.tolist() for s in theirs.series]
    assert data.initial == alone.initial == 0
    # Faded on the dev view at their values at the rung, per tuner in the page's order.
    assert [(s.tuner, s.rows.tolist()) for s in data.stopped] == [("pez", [7]), ("soft", [8])]
    assert [(*s.x, *s.y) for s in data.stopped] == [pytest.approx((0.95, -1.0)), pytest.approx((0.5, -7.0))]
    assert data.columns[-2:] == (("steps", "num"), ("stopped", "text"))
    assert early.cells[-2:] == (("4.0", "4"), ("4.0", "stopped at step 4"))
    assert data.trials[0].cells[-2:] == (("20.0", "20"), ("", ""))
    assert ("trials", "9 finished, 2 stopped at a rung", False) in data.header.facts
    # steps_done and stopped_at_step are not metrics: the details list them apart.
    assert not any(name.startswith((STEPS_DONE, STOPPED_AT)) for name, *_ in early.metrics)
    assert alone.stopped == () and ("stopped", "text") not in alone.columns


def test_write_exports_shows_stopped_trials_on_the_page_only(tmp_path):
    table = _stopped_table()
    with_stopped = write_exports(table, tmp_path / "with", OBJECTIVES)
    without = write_exports(table.iloc[:7], tmp_path / "without", OBJECTIVES)
    # trials.parquet keeps them, on no front; front.tex and the figure's data do not know them.
    saved = pq.read_table(tmp_path / "with" / "trials.parquet").to_pandas()
    assert len(saved) == 9 and not saved["is_pareto"].iloc[7:].any() and not saved["is_pareto_all"].iloc[7:].any()
    assert (tmp_path / "with" / "front.tex").read_bytes() == (tmp_path / "without" / "front.tex").read_bytes()
    assert with_stopped.fronts.hypervolume == without.fronts.hypervolume
    views = _views(tmp_path / "with" / REPORT_FILE)
    assert views["test"] == _views(tmp_path / "without" / REPORT_FILE)["test"]
    stopped = [t for t in views["dev"]["data"] if t["meta"]["kind"] == "stopped"]
    assert [(t["meta"]["group"], t["customdata"]) for t in stopped] == [("pez", [7]), ("soft", [8])]
    assert all(t["meta"]["stopped"] and t["marker"]["symbol"].endswith("-open") for t in stopped)
    on_fronts = {r for t in views["dev"]["data"] if t["meta"]["kind"] == "front" for r in t["customdata"]}
    assert on_fronts and max(on_fronts) < 7
    text, _ = _parse(tmp_path / "with" / REPORT_FILE)
    assert text.count('data-stopped="1"') == 2 and 'id="show-stopped" checked> 2 stopped at a rung' in text
    assert "stopped at step 4</span>" in text and "stopped at step 4: its values there, never on a front" in text


def test_write_exports_writes_the_report_and_lists_it(exported):
    out, result, _ = exported
    assert REPORT_FILE in result.files and (out / REPORT_FILE).stat().st_size > 1_000_000


def test_the_report_is_self_contained(exported):
    out, _, _ = exported
    text, page = _parse(out / REPORT_FILE)
    external = [link for link in page.links if re.match(r"\s*(https?:)?//", link, flags=re.IGNORECASE)]
    assert not external, f"the page loads {external}"
    assert page.scripts and all("src" not in attrs for attrs in page.scripts)
    assert "Plotly" in text and "<link" not in text


def test_the_report_holds_every_trial_and_escapes_prompts(exported):
    out, _, table = exported
    text, _ = _parse(out / REPORT_FILE)
    rows = re.findall(r'<tr data-row="(\d+)"', text)
    details = re.findall(r'<div class="trial" data-row="(\d+)"', text)
    assert sorted(map(int, rows)) == sorted(map(int, details)) == list(range(len(table)))
    for index, prompt in enumerate(table["prompt_text"]):
        assert f"t{index}" in text
        if prompt:
            assert html.escape(repr(prompt)) in text
    # A prompt holding </script> ends no element: the only raw </script> tags are the page's own three.
    assert text.count("</script>") == 4  # the guard, the data, plotly.js and the page's script
    assert "<script>alert(1)" not in text


def test_nan_and_inf_are_null_in_the_page_data(exported):
    out, _, table = exported
    _, page = _parse(out / REPORT_FILE)
    assert page.payload is not None
    data = _strict_json(page.payload)
    assert len(data["trials"]) == len(table)
    # Every trial with finite dev and test objectives is a point in both views; the NaN ones are not drawn.
    for view in ("test", "dev"):
        drawn = {
            row
            for trace in data["views"][view]["data"]
            if trace["meta"].get("counts")
            for row, x, y in zip(trace["customdata"], trace["x"], trace["y"], strict=True)
            if x is not None and y is not None
        }
        assert drawn == {0, 1, 2, 5, 6} | ({3} if view == "dev" else set()), view
    bars = [t["error_y"]["array"] for t in data["views"]["dev"]["data"] if "error_y" in t]
    assert any(None in b for b in bars)  # the infinite half-width is no bar, not a crash
    curve = data["curves"]["0"]
    assert curve["rep0/dev/acc"] == [[0, 5, 10], [0.5, None, 0.8]] and curve["rep1/dev/acc"][1] == [0.4, None]
    assert data["curve_keys"] == ["dev/acc", "train/ce"]


def test_the_header_shows_config_versions_commit_timings_and_hypervolumes(exported):
    out, result, _ = exported
    text, _ = _parse(out / REPORT_FILE)
    for needle in ("0123456789abcdef0123456789abcdef01234567", "plotly 7.1.0", "tune 1 min 07 s", "1 h 02 min"):
        assert needle in text, needle
    assert "7 finished of 8, 1 failed" in text and "&quot;num_samples&quot;: 3" in text
    for tuner, volume in result.fronts.hypervolume.items():
        assert f"{volume:.4f}" in text, tuner
    # The fresh summary metrics of this export are in the header's sweep fields, next to the older ones.
    assert "hypervolume/all" in text and "stale" in text


def test_the_header_shows_the_training_gain_of_tuners_that_report_one(tmp_path):
    table = _table()
    header = {"summary_metrics": {"learn/acc_dev_gain/pez": 0.0972, "learn/acc_dev_gain/pez.ci95": 0.1077}}
    text, _ = _parse(write_report(table, compute_fronts(table, OBJECTIVES), tmp_path, curves=None, header=header))
    assert "<th>training gain (dev)</th>" in text and "<td>+0.097 ± 0.108</td>" in text
    plain, _ = _parse(write_report(table, compute_fronts(table, OBJECTIVES), tmp_path, curves=None, header={}))
    assert "training gain" not in plain


def test_an_empty_table_gives_a_page(tmp_path):
    table = pd.DataFrame(columns=["tuner", "trial_id", "mlflow_run_id", "prompt_text", *OBJECTIVES])
    path = write_report(table, compute_fronts(table, OBJECTIVES), tmp_path, curves=None, header={})
    _, page = _parse(path)
    assert _strict_json(page.payload or "")["trials"] == []


def test_a_report_that_fails_leaves_the_other_exports(tmp_path, monkeypatch):
    import sweep.results.exports

    def broken(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("no plotly here")

    monkeypatch.setattr(sweep.results.exports, "write_report", broken)
    result = write_exports(_table(), tmp_path, OBJECTIVES)
    assert REPORT_FILE not in result.files and (tmp_path / "front.tex").exists()


def test_collect_curves_reads_histories_and_tolerates_missing_runs(tmp_path, monkeypatch):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("curves", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    bare = client.create_run(experiment).info.run_id
    metrics = [Metric("rep0/dev/acc", v, 1000 + s, s) for s, v in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])]
    # A resumed trial logs step 2 again, later: the later value counts. NaN is stored and read back as NaN.
    metrics += [Metric("rep0/dev/acc", 0.25, 5000, 2), Metric("rep0/train/loss", NAN, 1000, 0)]
    metrics += [Metric("task/acc_dev", 0.9, 1000, 7)]  # a final metric, not a curve
    client.log_batch(run, metrics=metrics)
    curves = collect_curves(uri, [run, "0" * 32, bare, None, NAN, run], max_points=4)
    assert set(curves) == {run, bare} and curves[bare] == {}
    assert set(curves[run]) == {"rep0/dev/acc", "rep0/train/loss"}
    assert curves[run]["rep0/dev/acc"] == [(0, 0.1), (2, 0.25), (4, 0.5), (6, 0.7)]  # thinned, first and last kept
    assert math.isnan(curves[run]["rep0/train/loss"][0][1])
    # Runs the caller has read already name their curves without a search, to the same result.
    known = client.search_runs([experiment])
    read = collect_curves(uri, [run, "0" * 32, bare, None, NAN, run], max_points=4, runs=known)
    assert read.keys() == curves.keys() and read[run].keys() == curves[run].keys()
    assert read[run]["rep0/dev/acc"] == curves[run]["rep0/dev/acc"]
    # An answer that may have been cut at the bulk read's cap is asked again in halves, then one run a request.
    monkeypatch.setattr(mlflow_log, "_BULK_POINTS", 3)
    again = collect_curves(uri, [run, "0" * 32, bare, None, NAN, run], max_points=4)
    assert again.keys() == curves.keys() and again[run]["rep0/dev/acc"] == curves[run]["rep0/dev/acc"]


# --- the smoke sweep's report in a real browser ---------------------------------------------------------------


def _chromium(url: str, folder: Path, *extra: str) -> tuple[str, str]:
    """Run headless chromium on ``url`` with the network cut off; returns the DOM after the page's scripts ran
    and chromium's log (which carries every console message of the page)."""
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",  # CI runs as root, where chromium refuses its sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={folder / 'profile'}",
        # Anything the page tried to fetch would fail and show as a console error.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=1",
        "--virtual-time-budget=15000",
        *extra,
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout, done.stderr


def _attributes(dom: str, tag: str, element_id: str | None = None) -> dict[str, str]:
    """The attributes of the first ``<tag>`` (with ``id=element_id``) of ``dom``; valueless ones map to ``""``."""
    where = rf'[^>]*\bid="{element_id}"' if element_id else ""
    match = re.search(rf"<{tag}\b{where}[^>]*>", dom)
    assert match, f"no <{tag} id={element_id!r}> in the rendered page"
    return {name: value for name, _, value in re.findall(r'\s([\w-]+)(="([^"]*)")?', match.group(0))}


def _console(log: str) -> list[str]:
    # Chromium logs each console message of a page as a CONSOLE line; the report itself logs nothing.
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not on PATH: install Debian's chromium (apt-get install chromium), as .ci/run does")
    return "chromium"


# Opens the report in a frame, reads what it drew in the dev view, clears the stopped box and reads it again.
_TOGGLE = """<!DOCTYPE html><html><body><iframe id="f" src="report.html#dev" width="1400" height="1000"></iframe>
<script>
var f = document.getElementById("f");
function read(d) {
  var rows = d.querySelectorAll("#trials-table tr[data-stopped]");
  return d.getElementById("fronts").dataset.drawnTrials + "/" +
    Array.prototype.filter.call(rows, function (tr) { return tr.hidden; }).length + "/" + rows.length;
}
f.onload = function () {
  setTimeout(function () {
    var d = f.contentDocument, before = read(d);
    d.getElementById("show-stopped").click();
    setTimeout(function () { document.body.dataset.toggle = before + " then " + read(d); }, 3000);
  }, 5000);
};
</script></body></html>
"""


def test_stopped_trials_are_drawn_faded_and_toggled_in_a_browser(browser, tmp_path):
    write_exports(_stopped_table(), tmp_path, OBJECTIVES)
    dom, log = _chromium((tmp_path / REPORT_FILE).as_uri(), tmp_path)
    assert not _console(log), _console(log)
    # The test view draws the full-budget trials with finite values; the stopped ones are not on it.
    assert _attributes(dom, "section", "fronts")["data-drawn-trials"] == "5"
    (tmp_path / "toggle.html").write_text(_TOGGLE)
    dom, log = _chromium((tmp_path / "toggle.html").as_uri(), tmp_path, "--allow-file-access-from-files")
    assert not _console(log), _console(log)
    # Dev view: 6 full-budget trials and the 2 stopped ones, no stopped row hidden; cleared: 6, both rows hidden.
    assert _attributes(dom, "body")["data-toggle"] == "8/0/2 then 6/2/2"


def test_the_smoke_sweeps_report_renders_in_a_browser(browser, smoke_sweep, tmp_path):
    from sweep.export import main

    out, summary, _, _ = smoke_sweep
    assert (out / REPORT_FILE).stat().st_size > 0  # the sweep's own
    # Rebuilt from MLflow: the path that collects every trial's learning curves and finds sweep.json.
    rebuilt = tmp_path / "export"
    assert main(["--tracking-uri", summary["tracking_uri"], "--experiment", "smoke", "--out", str(rebuilt)]) == 0
    report = rebuilt / REPORT_FILE
    table = pq.read_table(rebuilt / "trials.parquet").to_pandas()
    text, page = _parse(report)
    data = _strict_json(page.payload or "")
    learned = [str(i) for i in np.flatnonzero(~table["tuner"].isin(["no_prompt", "manual", "lm_sample"]))]
    assert all(data["curves"][row] for row in learned) and data["curve_keys"][0] == "dev/acc"
    assert summary["git_commit"] in text and summary["versions"]["torch"] in text
    screenshot = tmp_path / "report.png"
    dom, log = _chromium(report.as_uri(), tmp_path, "--window-size=1400,1000", f"--screenshot={screenshot}")
    assert not _console(log), _console(log)
    assert "data-errors" not in _attributes(dom, "html") and "hidden" in _attributes(dom, "div", "errors")
    fronts = _attributes(dom, "section", "fronts")
    assert fronts["data-view"] == "test" and int(fronts["data-drawn-trials"]) == len(table)
    # Plotly drew a marker for every trial but the no-prompt one (its reference line), plus a cross on each
    # proxy-gamed point.
    markers = int((table["tuner"] != "no_prompt").sum()) + int(table["proxy_gamed"].sum())
    assert int(fronts["data-drawn-points"]) == markers
    assert f"{len(table)} of {len(table)} trials drawn" in dom
    # The page opens on the best point of the front across tuners, a learned trial with its curves drawn.
    assert int(_attributes(dom, "div", "curves")["data-lines"]) >= 1

    dev, log = _chromium(report.as_uri() + "#dev", tmp_path)
    assert not _console(log), _console(log)
    fronts = _attributes(dev, "section", "fronts")
    assert fronts["data-view"] == "dev" and int(fronts["data-drawn-trials"]) == len(table)

    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[:2] == (1000, 1400)
    # The fronts are drawn, not an empty frame: the plot's area holds coloured (non-grey) marks.
    plot = pixels[380:900, 40:820, :3]
    coloured = (plot.max(axis=2) - plot.min(axis=2)) > 0.25
    # About 50 pixels per marker; an empty or grey-only frame has none.
    assert coloured.sum() > 10 * len(table), "the plot area has almost no coloured pixels"
    shutil.copy(screenshot, SCREENSHOT_COPY)
