"""Tests of the Pareto figure's computed content and of the export files (parquet, PDF/SVG/PNG, LaTeX)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.text import Text

from objectives.stats import aggregate
from sweep.results.columns import BASELINE_STYLES, TUNER_STYLES, tuner_styles
from sweep.results.compare import compare_to_baselines
from sweep.results.exports import write_exports
from sweep.results.figure import VIEWS, axis_label, pareto_plot, short_prompt
from sweep.results.pareto import compute_fronts
from sweep.results.render import MAX_LABELS, _label_requests, draw, legend_entries, render
from sweep.results.tables import front_latex, front_table_text, latex_escape

OBJECTIVES = ("task/acc_dev", "interp/scrutability")
NASTY = "50% of #1_best {x} & \n"
NAN = float("nan")
INF = float("inf")
R = 3


def _table() -> pd.DataFrame:
    """Rows 0-2 pez, 3-5 soft. Both objectives are higher-is-better, so original units = maximisation."""
    return pd.DataFrame(
        {
            "tuner": ["pez", "pez", "pez", "soft", "soft", "soft"],
            "trial_id": [f"t{i}" for i in range(6)],
            "mlflow_run_id": [f"r{i}" for i in range(6)],
            "param/lambda_ppl": [0.0, 0.5, 1.0, 0.0, 0.5, 1.0],
            "param/lambda_dist": [0.1, 0.2, 0.3, NAN, NAN, NAN],
            "task/acc_dev": [0.9, 0.6, 0.5, 0.7, 0.65, NAN],
            "task/acc_test": [0.88, 0.61, 0.52, 0.69, 0.6, 0.5],
            "interp/scrutability": [-6.0, -3.0, -4.0, -5.0, -2.0, -1.0],
            "interp/log_ppl": [6.0, 3.0, 4.0, 5.0, 2.0, 1.0],
            "interp/repeat_frac": [0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
            "interp/special_frac": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "prompt_text": [NASTY, " great great great", "caf\u00e9 review", "tab\there", "x" * 100, "nan row"],
            "prompt_ids": [[1, 2, 3], [7, 7, 7], [4], np.array([5, 6]), [9] * 10, []],
        }
    )


def _replicated(row: dict, **replicates: list[float]) -> dict:
    """``row`` plus ``m``, ``m.std``, ``m.ci95``, ``m.r0..r2`` for each metric given as its R = 3 replicate values."""
    per_replicate = [{name: values[i] for name, values in replicates.items()} for i in range(R)]
    return {**row, **aggregate(per_replicate)}


def _trial(tuner: str, prompt: str, lam: float, dev: list, test: list, scr: list, repeat: float = 0.0) -> dict:
    row = {"tuner": tuner, "prompt_text": prompt, "replicate_prompts": [prompt] * R, "param/lambda_ppl": lam}
    return _replicated(
        row,
        **{
            "task/acc_dev": dev,
            "task/acc_test": test,
            "interp/scrutability": scr,
            "interp/log_ppl": [-v for v in scr],
            "interp/repeat_frac": [repeat] * R,
            "interp/special_frac": [0.0] * R,
        },
    )


def _sweep() -> pd.DataFrame:
    """A sweep with R = 3 replicates, every baseline, a duplicate result, a gamed prompt and NaN/inf rows.

    Row: 0-3 pez (3 repeats 1 exactly, 2 is dominated by 1), 4-7 soft (5 has no dev accuracy, 6 an infinite
    scrutability, 7 an infinite test accuracy), 8-9 rlprompt (8 gamed), 10 no_prompt, 11-12 manual, 13 lm_sample.
    """
    rows = [
        _trial("pez", " a very good film", 0.0, [0.80, 0.82, 0.84], [0.76, 0.79, 0.78], [-6.2, -6.0, -5.8]),
        _trial("pez", " movie review:", 0.5, [0.70, 0.72, 0.74], [0.80, 0.81, 0.79], [-3.2, -3.0, -2.8]),
        _trial("pez", " xq zr", 0.3, [0.60, 0.62, 0.64], [0.61, 0.60, 0.62], [-5.0, -4.5, -4.0]),
        _trial("pez", " movie review:", 0.6, [0.70, 0.72, 0.74], [0.80, 0.81, 0.79], [-3.2, -3.0, -2.8]),
        _trial("soft", "soft one", 0.0, [0.74, 0.75, 0.76], [0.70, 0.71, 0.72], [-8.2, -8.0, -7.8]),
        {
            "tuner": "soft",
            "prompt_text": "no dev",
            "task/acc_dev": NAN,
            "task/acc_test": 0.7,
            "interp/scrutability": -5.0,
        },
        {
            "tuner": "soft",
            "prompt_text": "inf scr",
            "task/acc_dev": 0.95,
            "task/acc_test": 0.9,
            "interp/scrutability": INF,
        },
        {
            "tuner": "soft",
            "prompt_text": "inf test",
            "task/acc_dev": 0.6,
            "task/acc_test": -INF,
            "interp/scrutability": -2.0,
        },
        _trial("rlprompt", " the the the the", 0.1, [0.64, 0.65, 0.66], [0.50, 0.56, 0.53], [-1.6, -1.5, -1.4], 0.75),
        _trial("rlprompt", " superb acting", 0.0, [0.77, 0.78, 0.79], [0.74, 0.75, 0.76], [-7.2, -7.0, -6.8]),
        _trial("no_prompt", "", NAN, [0.54, 0.55, 0.56], [0.52, 0.54, 0.53], [0.0, 0.0, 0.0]),
        _trial("manual", " It was", NAN, [0.59, 0.60, 0.61], [0.57, 0.59, 0.58], [-4.1, -4.0, -3.9]),
        _trial("manual", " My rating: the film is", NAN, [0.65, 0.66, 0.67], [0.63, 0.65, 0.64], [-3.6, -3.5, -3.4]),
        _trial("lm_sample", " The first time I saw", NAN, [0.57, 0.58, 0.59], [0.56, 0.58, 0.57], [-2.6, -2.5, -2.4]),
    ]
    table = pd.DataFrame(rows)
    table.insert(1, "trial_id", [f"t{i}" for i in range(len(table))])
    table.insert(2, "mlflow_run_id", [f"r{i}" for i in range(len(table))])
    table.loc[4, "task/acc_test.ci95"] = NAN  # one point without an x interval: it gets no x bar
    return table


def _sweep_plot(view: str = "test", **kwargs) -> tuple[pd.DataFrame, object]:
    table = compare_to_baselines(_sweep())
    return table, pareto_plot(table, compute_fronts(table, OBJECTIVES), view=view, **kwargs)


# --- ParetoPlot (computed, not drawn) ---------------------------------------------------------------------


def test_pareto_plot_dev_view_content():
    table = _table()
    plot = pareto_plot(table, compute_fronts(table, OBJECTIVES), view="dev")
    assert plot.axes == plot.objectives == OBJECTIVES
    assert plot.x_label == "Dev accuracy" and plot.y_label == "Readability (\u2212log perplexity)"
    assert [s.tuner for s in plot.series] == ["pez", "soft"]

    pez = plot.tuner("pez")
    assert pez.rows.tolist() == [0, 1, 2]
    assert pez.x.tolist() == [0.9, 0.6, 0.5] and pez.y.tolist() == [-6.0, -3.0, -4.0]
    assert pez.front.tolist() == [1, 0]  # (0.6, -3) and (0.9, -6), sorted by x
    assert pez.dominated.tolist() == [2]  # (0.5, -4) is beaten by (0.6, -3)
    assert pez.gamed.tolist() == [1]  # repeat_frac 0.5
    assert np.isnan(pez.x_err).all()  # no replicate columns: no bars

    soft = plot.tuner("soft")
    assert soft.rows.tolist() == [3, 4, 5]
    assert soft.front.tolist() == [1, 0]  # (0.65, -2) then (0.7, -5); indices into soft's own x, y
    assert soft.dominated.tolist() == []  # row 5 has no acc_dev: not drawn at all
    assert soft.gamed.tolist() == []
    assert plot.step_where == "pre" and not plot.join_front
    assert "0.3" in plot.gamed_label and "proxy gamed" in plot.gamed_label
    with pytest.raises(KeyError, match="pez"):
        plot.tuner("rlprompt")
    with pytest.raises(ValueError, match="view"):
        pareto_plot(table, compute_fronts(table, OBJECTIVES), view="train")


def test_pareto_plot_test_view_uses_test_x_in_dev_front_order():
    table, plot = _sweep_plot()
    assert plot.view == "test" and plot.axes == ("task/acc_test", "interp/scrutability")
    assert plot.objectives == OBJECTIVES
    assert plot.x_label == "Test accuracy"
    assert plot.step_where is None and plot.join_front  # no staircase: a thin line in dev-front order
    assert [s.tuner for s in plot.series] == ["pez", "rlprompt", "soft"]  # fixed order; baselines apart

    pez = plot.tuner("pez")
    assert pez.x.tolist() == pytest.approx(table["task/acc_test"][:4].tolist())
    # Dev front order: (0.72, -3) twice (rows 1, 3: a tie keeps table order), then (0.82, -6) ...
    assert pez.front.tolist() == [1, 3, 0]
    # ... which on test runs backwards in x (0.80 then 0.777): the order comes from dev, not from the view.
    assert pez.x[1] > pez.x[0]
    assert pez.dominated.tolist() == [2]

    soft = plot.tuner("soft")
    # Row 7 is on soft's dev front but its test accuracy is -inf: not drawn; rows 5, 6 are never drawn.
    assert soft.front.tolist() == [0] and soft.dominated.tolist() == []
    dev = _sweep_plot("dev")[1].tuner("soft")
    assert dev.front.tolist() == [3, 0] and dev.dominated.tolist() == []  # (0.6, -2) then (0.75, -8)
    assert _sweep_plot("dev")[1].step_where == "pre"


def test_pareto_plot_labels_default_and_override(tmp_path):
    _, plot = _sweep_plot(labels={"task/acc_test": "Held-out accuracy", "task/acc_dev": "Selection accuracy"})
    assert plot.x_label == "Held-out accuracy" and plot.y_label == "Readability (\u2212log perplexity)"
    _, dev = _sweep_plot("dev", labels={"task/acc_dev": "Selection accuracy"})
    assert dev.x_label == "Selection accuracy"
    assert axis_label("interp/log_ppl") == "Prompt log-perplexity"
    assert axis_label("interp/word_frac") == "Real-word share"
    assert axis_label("faith/dist").startswith("Faithfulness")
    assert axis_label("task/ce") == "Task cross-entropy"
    assert axis_label("baseline/acc_dev") == "baseline/acc_dev ↑"  # no default: the key with its direction
    assert axis_label("baseline/acc_dev", {"baseline/acc_dev": "No-prompt accuracy"}) == "No-prompt accuracy"
    # A user label with an unpaired "$" is drawn as text rather than failing mathtext at save time.
    _, dollars = _sweep_plot(labels={"task/acc_test": "Accuracy ($)", "interp/scrutability": "$-\\log p$"})
    assert [p.name for p in draw(dollars, tmp_path / "d", formats=("png",))] == ["d.png"]


def test_pareto_plot_error_bars_from_replicates():
    table, plot = _sweep_plot()
    pez = plot.tuner("pez")
    assert pez.x_err.tolist() == pytest.approx(table["task/acc_test.ci95"][:4].tolist())
    assert pez.y_err.tolist() == pytest.approx(table["interp/scrutability.ci95"][:4].tolist())
    # std 0.02 over 3 replicates: t(2) * 0.02 / sqrt(3)
    assert pez.y_err[0] == pytest.approx(4.302652729911275 * 0.2 / math.sqrt(3))
    soft = plot.tuner("soft")
    assert math.isnan(soft.x_err[0]) and math.isfinite(soft.y_err[0])  # ci95 NaN on x: no x bar

    figure = render(plot)
    ax = figure.axes[0]
    x_bars = sum(len(c.lines[2][0].get_segments()) for c in ax.containers if c.has_xerr)
    y_bars = sum(len(c.lines[2][0].get_segments()) for c in ax.containers if c.has_yerr)
    every = (*plot.series, *plot.baselines)
    points = sum(len(s.front) for s in every)
    assert x_bars == sum(int(np.isfinite(s.x_err[s.front]).sum()) for s in every) == points - 1  # all but soft's
    assert y_bars == points


def test_error_bars_stop_at_the_metric_bounds():
    table = _sweep()
    table.loc[0, "task/acc_test.ci95"] = 0.5  # 0.777 + 0.5 would be an accuracy above 1
    table.loc[8, "interp/scrutability.ci95"] = 3.0  # -1.5 + 3 would be a perplexity below 1
    plot = pareto_plot(table, compute_fronts(table, OBJECTIVES))
    assert plot.x_range == (0.0, 1.0) and plot.y_range == (-math.inf, 0.0)
    assert plot.tuner("pez").x_err[0] == 0.5  # the computed half-width is kept as measured
    ax = render(plot).axes[0]
    ends = [c.lines[2][0].get_segments() for c in ax.containers]
    xs = np.array([p[0] for segments in ends for segment in segments for p in segment])
    ys = np.array([p[1] for segments in ends for segment in segments for p in segment])
    assert xs.max() == pytest.approx(1.0) and xs.min() >= 0.0 and ys.max() == pytest.approx(0.0)


def test_pareto_plot_no_prompt_is_a_line_not_a_point():
    table, plot = _sweep_plot()
    assert all(s.tuner != "no_prompt" for s in (*plot.series, *plot.baselines))
    assert plot.x_baseline == pytest.approx(0.53) and plot.y_baseline is None
    assert plot.x_baseline_err == pytest.approx(table["task/acc_test.ci95"][10])
    assert _sweep_plot("dev")[1].x_baseline == pytest.approx(0.55)

    ax = render(plot).axes[0]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == pytest.approx(0.53)
    assert dashed[0].get_label() == "no prompt"
    assert "no prompt" in [t.get_text().strip() for t in ax.texts]
    # Its scrutability (0: no prompt to read) does not stretch the y axis: the best drawn point is at -1.5.
    assert ax.get_ylim()[1] < -0.5


def test_pareto_plot_no_prompt_falls_back_to_baseline_columns():
    table = _table()
    assert pareto_plot(table, compute_fronts(table, OBJECTIVES)).x_baseline is None
    table["baseline/acc_dev"] = [0.55] * 3 + [0.65] * 3
    table["baseline/acc_test"] = [0.5] * 6
    assert pareto_plot(table, compute_fronts(table, OBJECTIVES), view="dev").x_baseline == pytest.approx(0.6)
    assert pareto_plot(table, compute_fronts(table, OBJECTIVES)).x_baseline == pytest.approx(0.5)


def test_pareto_plot_baseline_markers_and_labels():
    _, plot = _sweep_plot()
    assert [s.tuner for s in plot.baselines] == ["manual", "lm_sample"]
    manual = plot.baseline("manual")
    assert manual.rows.tolist() == [11, 12] and manual.front.tolist() == [0, 1]
    assert manual.x.tolist() == pytest.approx([0.58, 0.64])
    assert manual.texts == ("' It was'", "' My rating: the fi…'")
    assert manual.label == "hand-written" and manual.marker == "*"
    lm = plot.baseline("lm_sample")
    assert lm.label == "LM-sampled" and lm.marker not in {s.marker for s in plot.series} | {"*"}
    with pytest.raises(KeyError, match="manual"):
        plot.baseline("no_prompt")

    figure = render(plot)
    assert {"pez", "soft", "rlprompt", "hand-written", "LM-sampled", "no prompt", "dominated"} <= set(
        legend_entries(figure)
    )
    assert any("proxy gamed" in t for t in legend_entries(figure))
    labels = [t.get_text() for t in figure.axes[0].texts]
    assert "' It was'" in labels and "' My rating: the fi…'" in labels and "' The first time I …'" in labels


def test_prompt_labels_stay_inside_and_do_not_overlap():
    _, plot = _sweep_plot()
    figure = render(plot)
    ax = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text().startswith("'")]
    for label in labels:
        label.update_positions(renderer)
    # The text alone: a far label's leader line starts at its point by design.
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    assert len(boxes) >= 6  # the baselines and most front points are labelled
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])


def test_a_front_of_hundreds_of_points_tries_an_even_share_of_labels():
    """A 1,000-trial sweep's front has hundreds of points: the figure tries at most MAX_LABELS labels (the
    baselines' all, the fronts' evenly spread), where trying each one cost most of the export's time."""
    many = [
        _trial("pez", f" p{i}", 0.0, [0.5 + i / 1000] * R, [0.5 + i / 1000] * R, [-1.0 - i / 100] * R)
        for i in range(300)
    ]
    table = compare_to_baselines(pd.concat([_sweep(), pd.DataFrame(many)], ignore_index=True))
    plot = pareto_plot(table, compute_fronts(table, OBJECTIVES), view="test")
    assert len(plot.tuner("pez").front) > MAX_LABELS  # every new point is on the front
    requests = _label_requests(plot)
    texts = [r[2] for r in requests]
    assert len(requests) == MAX_LABELS
    assert {b.texts[i] for b in plot.baselines for i in b.front.tolist()} <= set(texts)  # every baseline tried
    numbers = [int(t[3:-1]) for t in texts if t.startswith("' p")]
    assert min(numbers) == 0 and max(numbers) > 250  # spread along the whole front, not its first points
    figure = render(plot)
    assert sum(t.get_text().startswith("'") for t in figure.axes[0].texts) <= MAX_LABELS


def test_short_prompt():
    assert short_prompt(" It was") == "' It was'"  # quotes show the leading space
    assert short_prompt("a" * 30, 5) == "'aaaaa…'"
    assert short_prompt("tab\there") == "'tab\\there'"
    assert short_prompt("caf\u00e9 \u4e2d") == "'caf\u00e9 \\u4e2d'"  # Latin kept, glyphs the font may lack escaped


def test_legend_is_outside_the_axes():
    _, plot = _sweep_plot()
    figure = render(plot)
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[0]
    assert figure.get_figwidth() == pytest.approx(3.4)  # one paper column; the legend rows add height
    assert not ax.get_legend()  # no legend inside the axes
    legend = figure.legends[0].get_window_extent(renderer)
    axes_box = ax.get_tightbbox(renderer)  # the axes with their ticks and axis labels
    assert legend.y1 <= axes_box.y0  # below everything of the axes, the x label included
    assert 0 <= legend.x0 and legend.x1 <= figure.bbox.x1 and legend.y0 >= 0  # not clipped


def test_pareto_plot_skips_nan_and_inf():
    table = _sweep()
    table.loc[0, "task/acc_test"] = INF
    table.loc[9, "interp/scrutability"] = -INF
    table.loc[11, "task/acc_test"] = NAN
    table.loc[13, "interp/scrutability.ci95"] = INF
    fronts = compute_fronts(table, OBJECTIVES)
    for view in VIEWS:
        plot = pareto_plot(table, fronts, view=view)
        for s in (*plot.series, *plot.baselines):
            points = np.concatenate([s.front, s.dominated]).astype(int)
            assert np.isfinite(s.x[points]).all() and np.isfinite(s.y[points]).all(), (view, s.tuner)
            assert not (np.isinf(s.x_err) | np.isinf(s.y_err)).any()
        figure = render(plot)
        for line in figure.axes[0].get_lines():
            data = np.asarray(line.get_xydata(), dtype=float)
            if line.get_linestyle() != "--":
                assert np.isfinite(data).all()
    test_view = pareto_plot(table, fronts)
    assert 0 not in test_view.tuner("pez").front.tolist()  # inf test accuracy: not drawn
    assert test_view.baseline("manual").front.tolist() == [1]


def test_pareto_plot_keeps_original_units_of_lower_is_better_metrics():
    table = _table()
    plot = pareto_plot(table, compute_fronts(table, ("interp/log_ppl", "task/acc_dev")), view="dev")
    assert plot.x_label == "Prompt log-perplexity"
    pez = plot.tuner("pez")
    assert pez.x.tolist() == [6.0, 3.0, 4.0]  # not negated
    assert pez.front.tolist() == [1, 0]  # x = 3 then 6
    assert plot.step_where == "post"
    # The test view swaps only the accuracy axis for its test counterpart; x is not an accuracy.
    test_view = pareto_plot(table, compute_fronts(table, ("interp/log_ppl", "task/acc_dev")))
    assert test_view.axes == ("interp/log_ppl", "task/acc_test") and test_view.join_front


def test_pareto_plot_three_objectives_draws_no_staircase():
    table = _table()
    for view in VIEWS:
        plot = pareto_plot(table, compute_fronts(table, (*OBJECTIVES, "interp/repeat_frac")), view=view)
        assert plot.step_where is None and not plot.join_front
    with pytest.raises(ValueError, match="2 objectives"):
        pareto_plot(table, compute_fronts(table, ["task/acc_dev"]))


def test_tuner_colours_are_fixed_across_figures():
    assert tuner_styles(["soft", "pez"])["pez"] == TUNER_STYLES["pez"]
    assert tuner_styles(["pez"])["pez"] == tuner_styles(["pez", "soft", "rlprompt", "other"])["pez"]
    both = tuner_styles(["a_new_one", "b_new_one", "pez"])
    assert both["a_new_one"] == tuner_styles(["a_new_one"])["a_new_one"] or both["a_new_one"] != both["b_new_one"]
    assert len(set(both.values())) == 3
    # No tuner looks like a baseline marker.
    assert not set(tuner_styles(["pez", "soft", "rlprompt", *"abcdef"]).values()) & set(BASELINE_STYLES.values())


def test_draw_empty_plot(tmp_path):
    empty = pd.DataFrame(columns=["tuner", *OBJECTIVES])
    plot = pareto_plot(empty, compute_fronts(empty, OBJECTIVES))
    assert plot.series == () and plot.baselines == ()
    paths = draw(plot, tmp_path / "sub" / "empty.v1")
    assert [p.name for p in paths] == ["empty.v1.pdf", "empty.v1.svg", "empty.v1.png"]
    assert all(p.stat().st_size > 0 for p in paths)


# --- LaTeX and text --------------------------------------------------------------------------------------


def test_latex_escape():
    assert latex_escape(NASTY) == r"50\% of \#1\_best \{x\} \& \textbackslash{}n"
    assert latex_escape(r"a\b~^") == r"a\textbackslash{}b\textasciitilde{}\textasciicircum{}"
    assert latex_escape("caf\u00e9\u200b\x00$") == r"caf\textless{}U+00E9\textgreater{}" + (
        r"\textless{}U+200B\textgreater{}\textless{}0x00\textgreater{}\$"
    )
    assert latex_escape(" a  b", keep_spaces=True) == "~a~~b"
    assert latex_escape("\U0001f600\t").isascii()


def test_front_latex():
    table = _table()
    tex = front_latex(table, compute_fronts(table, OBJECTIVES), max_prompt_chars=30)
    assert tex.isascii()
    for command in (r"\begin{table}", r"\begin{tabular}{llrrr}", r"\toprule", r"\midrule", r"\bottomrule"):
        assert command in tex
    assert r"task/acc\_dev $\uparrow$ & task/acc\_test $\uparrow$" in tex  # test next to the dev objective
    assert r"\texttt{50\%~of~\#1\_best~\{x\}~\&~\textbackslash{}n}" in tex
    # The prompt's own specials appear only escaped.
    cells = re.findall(r"\\texttt\{(.*?)\}(?: &|\\textsuperscript)", tex)
    assert cells and not any(re.search(r"(?<!\\)[%#_&]", c) for c in cells)
    assert r"\texttt{~great~great~great}\textsuperscript{\dag}" in tex  # gamed
    assert r"\texttt{" + "x" * 30 + r"\ldots{}}" in tex  # truncated to 30 characters
    assert "t2" not in tex and "caf" not in tex  # dominated trials are not in the table
    assert "Beats" not in tex and "Baselines" not in tex  # no baselines in this sweep
    # pez group first, tuner named once per group.
    assert tex.index("pez &") < tex.index("soft &") and tex.count("pez &") == 1
    caption = tex[tex.index(r"\caption{") :]
    assert "higher is better" in caption and "reference point" in caption
    assert r"task/acc\_dev = 0.4600" in caption  # 0.5 - 0.1 * (0.9 - 0.5)
    assert r"\dag" in caption


def test_front_latex_mean_std_beats_and_baselines():
    table = compare_to_baselines(_sweep())
    tex = front_latex(table, compute_fronts(table, OBJECTIVES))
    assert tex.isascii()
    assert r"\begin{tabular}{llrrrl}" in tex and r"& Beats \\" in tex
    row = next(line for line in tex.splitlines() if "a~very~good~film" in line)
    # mean +- sample std: dev [0.80, 0.82, 0.84], test [0.76, 0.79, 0.78], scrutability [-6.2, -6.0, -5.8]
    assert r"0.820 $\pm$ 0.020 & 0.777 $\pm$ 0.015 & -6.000 $\pm$ 0.200 & NP, HW, LM \\" in row
    gamed = next(line for line in tex.splitlines() if "the~the" in line)
    assert gamed.endswith(r"& none \\")  # paired test differences against no prompt straddle 0
    # The duplicate pez trial (rows 1 and 3) is one row with its count.
    assert tex.count("movie~review:") == 1 and r"($\times$2)" in tex
    # Baselines at the bottom, in their own block, each hand-written prompt on its row.
    block = tex[tex.index(r"\emph{Baselines}") :]
    assert tex.index("rlprompt &") < tex.index(r"\emph{Baselines}")
    # No prompt: its accuracies, and no readability (there is nothing to read).
    assert r"no prompt & -- & 0.550 $\pm$ 0.010 & 0.530 $\pm$ 0.010 & -- & none \\" in block
    assert r"hand-written & \texttt{~It~was}" in block and r"\texttt{~My~rating:~the~film~is}" in block
    assert r"LM-sampled & \texttt{~The~first~time~I~saw}" in block
    assert block.index("no prompt") < block.index("hand-written") < block.index("LM-sampled")
    my_rating = next(line for line in block.splitlines() if "My~rating" in line)
    assert my_rating.endswith(r"& NP, LM \\")
    caption = tex[tex.index(r"\caption{") :]
    assert "NP: no prompt" in caption and "HW: hand-written" in caption and "LM: LM-sampled" in caption
    volumes = caption[caption.index("Hypervolume:") :].split(". ")[0]
    assert "all" in volumes and not any(b in volumes for b in ("manual", "no\\_prompt", "lm\\_sample"))
    assert "over 3 replicates" in caption and "held-out" in caption
    # Rows with no interval at all say so rather than "none".
    single = table.copy()
    for column in [c for c in single.columns if str(c).startswith("vs/")]:
        single[column] = NAN
    single[[c for c in single.columns if str(c).startswith("beats/")]] = False
    assert r"& -- \\" in front_latex(single, compute_fronts(single, OBJECTIVES))


def test_front_latex_lower_is_better_reference_in_original_units():
    table = _table()
    tex = front_latex(table, compute_fronts(table, ("task/acc_dev", "interp/log_ppl")))
    assert r"interp/log\_ppl $\downarrow$" in tex
    assert "lower is better" in tex
    assert r"interp/log\_ppl = 6.5000" in tex  # worst log_ppl (6) plus a tenth of the range (5)


def test_front_table_text_has_fixed_columns():
    table = _table()
    text = front_table_text(table, compute_fronts(table, OBJECTIVES))
    lines = text.splitlines()
    metrics = ["task/acc_dev", "task/acc_test", "interp/scrutability", "interp/log_ppl"]
    assert lines[0].split() == ["tuner", "prompt", "n", "lambda_ppl", "lambda_dist", *metrics, "gamed", "all"]
    assert repr(NASTY) in text
    body = lines[2:]
    assert len(body) == 4 and body[0].startswith("pez") and body[-1].startswith("soft")
    start = lines[0].index("task/acc_dev")
    assert all(line[start - 1] == " " for line in body)
    assert "yes" in body[[i for i, line in enumerate(body) if "great" in line][0]]
    empty = pd.DataFrame(columns=["tuner", *OBJECTIVES])
    assert "(no trials)" in front_table_text(empty, compute_fronts(empty, OBJECTIVES))


def test_front_table_text_dedupes_and_lists_baselines():
    table = compare_to_baselines(_sweep())
    text = front_table_text(table, compute_fronts(table, OBJECTIVES))
    lines = text.splitlines()
    assert lines[0].split()[-1] == "beats" and "lambda_ppl" in lines[0]
    review = [line for line in lines if "movie review" in line]
    assert len(review) == 1 and review[0].split()[review[0].split().index("review:'") + 1] == "2"
    good = next(line for line in lines if "a very good film" in line)
    assert "0.820±0.050" in good and "0.777±0.038" in good and good.rstrip().endswith("NP, HW, LM")
    assert "6.000±0.497" in good  # log_ppl with its interval
    marker = lines.index("baselines")
    assert all(line.split()[0] in {"no_prompt", "manual", "lm_sample"} for line in lines[marker + 1 :])
    assert len(lines[marker + 1 :]) == 4 and set(lines[marker - 1]) == {"-", " "}  # a rule, then the baselines
    assert not any(line.startswith(("no_prompt", "manual", "lm_sample")) for line in lines[:marker])
    only_baselines = table[table["tuner"].isin(["no_prompt", "manual"])].reset_index(drop=True)
    text = front_table_text(only_baselines, compute_fronts(only_baselines, OBJECTIVES))
    assert "(no trials)" not in text and "baselines" in text


# --- write_exports ----------------------------------------------------------------------------------------

FILES = [
    "trials.parquet",
    *(f"pareto.{f}" for f in ("pdf", "svg", "png")),
    *(f"pareto_dev.{f}" for f in ("pdf", "svg", "png")),
    "front.tex",
    "report.html",
]


def test_write_exports(tmp_path):
    table = _table()
    out = tmp_path / "run" / "exports"
    exported = write_exports(table, out, OBJECTIVES)
    annotated = exported.table
    assert "is_pareto" not in table.columns
    assert annotated["is_pareto"].tolist() == [True, True, False, True, True, False]
    assert annotated["proxy_gamed"].tolist() == [False, True, False, False, False, False]
    assert exported.files == FILES

    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    for stem in ("pareto", "pareto_dev"):
        pdf = (out / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf and b"/FontFile2" in pdf  # embedded TrueType
        assert (out / f"{stem}.png").read_bytes().startswith(b"\x89PNG")
    svg = (out / "pareto.svg").read_text()
    assert "Test accuracy" in svg and "proxy gamed" in svg  # text kept as text
    assert "Dev accuracy" in (out / "pareto_dev.svg").read_text()
    assert r"\begin{tabular}" in (out / "front.tex").read_text()

    arrow = pq.read_table(out / "trials.parquet")
    assert arrow.schema.field("prompt_ids").type == pa.list_(pa.int64())
    assert arrow.schema.field("is_pareto").type == pa.bool_()
    assert set(arrow.column_names) == set(annotated.columns)
    back = arrow.to_pandas()
    assert [list(ids) for ids in back["prompt_ids"]] == [[1, 2, 3], [7, 7, 7], [4], [5, 6], [9] * 10, []]
    assert back["prompt_text"].tolist() == table["prompt_text"].tolist()
    assert back["is_pareto_all"].tolist() == annotated["is_pareto_all"].tolist()
    pd.testing.assert_series_equal(back["param/lambda_dist"], table["param/lambda_dist"])


def test_write_exports_with_baselines_labels_and_same_bytes(tmp_path):
    table = _sweep()
    labels = {"task/acc_test": "Held-out accuracy"}
    first = write_exports(table, tmp_path / "a", OBJECTIVES, labels=labels)
    second = write_exports(table, tmp_path / "b", OBJECTIVES, labels=labels)
    assert first.files == FILES
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    svg = (tmp_path / "a" / "pareto.svg").read_text()
    assert "Held-out accuracy" in svg and "hand-written" in svg and "no prompt" in svg
    assert "Dev accuracy" in (tmp_path / "a" / "pareto_dev.svg").read_text()
    assert first.table["beats/no_prompt"].tolist()[0] and not first.table["beats/no_prompt"].tolist()[8]
    assert second.summary_metrics["front_beats/no_prompt/pez"] == pytest.approx(1.0)
    assert r"\emph{Baselines}" in (tmp_path / "a" / "front.tex").read_text()
    back = pq.read_table(tmp_path / "a" / "trials.parquet")
    assert back.schema.field("replicate_prompts").type == pa.list_(pa.string())


def test_write_exports_empty_table(tmp_path):
    columns = ["tuner", "trial_id", "mlflow_run_id", "param/lambda_ppl", *OBJECTIVES, "prompt_text", "prompt_ids"]
    exported = write_exports(pd.DataFrame(columns=columns), tmp_path, OBJECTIVES)
    assert len(exported.table) == 0 and exported.files == FILES
    arrow = pq.read_table(tmp_path / "trials.parquet")
    assert arrow.num_rows == 0
    assert arrow.schema.field("prompt_ids").type == pa.list_(pa.int64())
    assert arrow.schema.field("tuner").type == pa.string()
    assert arrow.schema.field("task/acc_dev").type == pa.float64()
    for stem in ("pareto", "pareto_dev"):
        assert (tmp_path / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert "(no trials)" in (tmp_path / "front.tex").read_text()


def test_write_exports_needs_two_objectives(tmp_path):
    with pytest.raises(ValueError, match="2 objectives"):
        write_exports(_table(), tmp_path / "x", ["task/acc_dev"])
    assert not (tmp_path / "x").exists()


def test_learning_margin_averages_trials_within_a_replicate_then_summarises_replicates():
    from sweep.results.compare import learning_margin

    rows = [
        {"tuner": "rlprompt", **aggregate([{"learn/acc_dev_gain": v} for v in (0.25, 0.0, 0.125)])},
        {"tuner": "rlprompt", **aggregate([{"learn/acc_dev_gain": v} for v in (0.0, 0.125, 0.375)])},
        {"tuner": "pez", "learn/acc_dev_gain": float("nan")},
    ]
    out = learning_margin(pd.DataFrame(rows))
    # Replicate means 0.125, 0.0625, 0.25: mean 0.14583, sample std 0.09548, t(2) = 4.3027.
    assert out["learn/acc_dev_gain/rlprompt"] == pytest.approx(0.4375 / 3)
    assert out["learn/acc_dev_gain/rlprompt.n"] == 3 and out["learn/acc_dev_gain/rlprompt.trials"] == 2
    assert out["learn/acc_dev_gain/rlprompt.ci95"] == pytest.approx(4.3027 * 0.095470 / math.sqrt(3), rel=1e-4)
    assert not any(k.startswith("learn/acc_dev_gain/pez") for k in out)
    assert learning_margin(pd.DataFrame({"tuner": ["pez"]})) == {}
