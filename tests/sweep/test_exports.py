"""Tests of the Pareto figure's computed content and of the export files (parquet, PDF/SVG/PNG, LaTeX)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweep.exports import front_latex, front_table_text, latex_escape, write_exports
from sweep.pareto import compute_fronts
from sweep.plots import TUNER_STYLES, draw, pareto_plot, tuner_styles

OBJECTIVES = ("task/acc_dev", "interp/scrutability")
NASTY = "50% of #1_best {x} & \n"
NAN = float("nan")


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


# --- ParetoPlot (computed, not drawn) ---------------------------------------------------------------------


def test_pareto_plot_content():
    table = _table()
    plot = pareto_plot(table, compute_fronts(table, OBJECTIVES))
    assert plot.x_label == "task/acc_dev ↑" and plot.y_label == "interp/scrutability ↑"
    assert [s.tuner for s in plot.series] == ["pez", "soft"]

    pez = plot.tuner("pez")
    assert pez.rows.tolist() == [0, 1, 2]
    assert pez.x.tolist() == [0.9, 0.6, 0.5] and pez.y.tolist() == [-6.0, -3.0, -4.0]
    assert pez.front.tolist() == [1, 0]  # (0.6, -3) and (0.9, -6), sorted by x
    assert pez.dominated.tolist() == [2]  # (0.5, -4) is beaten by (0.6, -3)
    assert pez.gamed.tolist() == [1]  # repeat_frac 0.5

    soft = plot.tuner("soft")
    assert soft.rows.tolist() == [3, 4, 5]
    assert soft.front.tolist() == [1, 0]  # (0.65, -2) then (0.7, -5); indices into soft's own x, y
    assert soft.dominated.tolist() == []  # row 5 has no acc_dev: not drawn at all
    assert soft.gamed.tolist() == []
    assert plot.step_where == "pre"
    assert "0.3" in plot.gamed_label and "proxy gamed" in plot.gamed_label
    with pytest.raises(KeyError, match="pez"):
        plot.tuner("rlprompt")


def test_pareto_plot_no_prompt_baseline_line():
    table = _table()
    assert pareto_plot(table, compute_fronts(table, OBJECTIVES)).x_baseline is None
    table["baseline/acc_dev"] = [0.55] * 3 + [0.65] * 3
    assert pareto_plot(table, compute_fronts(table, OBJECTIVES)).x_baseline == pytest.approx(0.6)


def test_pareto_plot_keeps_original_units_of_lower_is_better_metrics():
    table = _table()
    plot = pareto_plot(table, compute_fronts(table, ("interp/log_ppl", "task/acc_dev")))
    assert plot.x_label == "interp/log_ppl ↓"
    pez = plot.tuner("pez")
    assert pez.x.tolist() == [6.0, 3.0, 4.0]  # not negated
    assert pez.front.tolist() == [1, 0]  # x = 3 then 6
    assert plot.step_where == "post"


def test_pareto_plot_three_objectives_draws_no_staircase():
    table = _table()
    plot = pareto_plot(table, compute_fronts(table, (*OBJECTIVES, "task/acc_test")))
    assert plot.step_where is None
    with pytest.raises(ValueError, match="2 objectives"):
        pareto_plot(table, compute_fronts(table, ["task/acc_dev"]))


def test_tuner_colours_are_fixed_across_figures():
    assert tuner_styles(["soft", "pez"])["pez"] == TUNER_STYLES["pez"]
    assert tuner_styles(["pez"])["pez"] == tuner_styles(["pez", "soft", "rlprompt", "other"])["pez"]
    both = tuner_styles(["a_new_one", "b_new_one", "pez"])
    assert both["a_new_one"] == tuner_styles(["a_new_one"])["a_new_one"] or both["a_new_one"] != both["b_new_one"]
    assert len(set(both.values())) == 3


def test_draw_empty_plot(tmp_path):
    empty = pd.DataFrame(columns=["tuner", *OBJECTIVES])
    plot = pareto_plot(empty, compute_fronts(empty, OBJECTIVES))
    assert plot.series == ()
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
    assert r"task/acc\_dev $\uparrow$" in tex and r"task/acc\_test $\uparrow$" in tex
    assert r"\texttt{50\%~of~\#1\_best~\{x\}~\&~\textbackslash{}n}" in tex
    # The prompt's own specials appear only escaped.
    cells = re.findall(r"\\texttt\{(.*?)\}(?: &|\\textsuperscript)", tex)
    assert cells and not any(re.search(r"(?<!\\)[%#_&]", c) for c in cells)
    assert r"\texttt{~great~great~great}\textsuperscript{\dag}" in tex  # gamed
    assert r"\texttt{" + "x" * 30 + r"\ldots{}}" in tex  # truncated to 30 characters
    assert "t2" not in tex and "caf" not in tex  # dominated trials are not in the table
    # pez group first, tuner named once per group.
    assert tex.index("pez &") < tex.index("soft &") and tex.count("pez &") == 1
    caption = tex[tex.index(r"\caption{") :]
    assert "higher is better" in caption and "reference point" in caption
    assert r"task/acc\_dev = 0.4600" in caption  # 0.5 - 0.1 * (0.9 - 0.5)
    assert r"\dag" in caption


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
    assert lines[0].split() == ["tuner", "prompt", *OBJECTIVES, "gamed", "all"]
    assert repr(NASTY) in text
    body = lines[2:]
    assert len(body) == 4 and body[0].startswith("pez") and body[-1].startswith("soft")
    start = lines[0].index("task/acc_dev")
    assert all(line[start - 1] == " " for line in body)
    assert "yes" in body[[i for i, line in enumerate(body) if "great" in line][0]]
    empty = pd.DataFrame(columns=["tuner", *OBJECTIVES])
    assert "(no trials)" in front_table_text(empty, compute_fronts(empty, OBJECTIVES))


# --- write_exports ----------------------------------------------------------------------------------------


def test_write_exports(tmp_path):
    table = _table()
    out = tmp_path / "run" / "exports"
    annotated = write_exports(table, out, OBJECTIVES)
    assert "is_pareto" not in table.columns
    assert annotated["is_pareto"].tolist() == [True, True, False, True, True, False]
    assert annotated["proxy_gamed"].tolist() == [False, True, False, False, False, False]

    names = ["trials.parquet", "pareto.pdf", "pareto.svg", "pareto.png", "front.tex"]
    for name in names:
        assert (out / name).stat().st_size > 0, name
    pdf = (out / "pareto.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Type3" not in pdf
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    svg = (out / "pareto.svg").read_text()
    assert "task/acc_dev" in svg and "proxy gamed" in svg  # text kept as text
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


def test_write_exports_empty_table(tmp_path):
    columns = ["tuner", "trial_id", "mlflow_run_id", "param/lambda_ppl", *OBJECTIVES, "prompt_text", "prompt_ids"]
    annotated = write_exports(pd.DataFrame(columns=columns), tmp_path, OBJECTIVES)
    assert len(annotated) == 0
    arrow = pq.read_table(tmp_path / "trials.parquet")
    assert arrow.num_rows == 0
    assert arrow.schema.field("prompt_ids").type == pa.list_(pa.int64())
    assert arrow.schema.field("tuner").type == pa.string()
    assert arrow.schema.field("task/acc_dev").type == pa.float64()
    assert (tmp_path / "pareto.pdf").read_bytes().startswith(b"%PDF")
    assert "(no trials)" in (tmp_path / "front.tex").read_text()


def test_write_exports_needs_two_objectives(tmp_path):
    with pytest.raises(ValueError, match="2 objectives"):
        write_exports(_table(), tmp_path / "x", ["task/acc_dev"])
    assert not (tmp_path / "x").exists()
