"""The results of a sweep: its fronts, the comparisons with the baselines, the figure, the tables and the page.

What lives where (each module imports its vocabulary from ``columns``; MLflow is read in ``sweep.mlflow_log``):

- ``columns``: the names (trials.parquet columns, metrics, ``param/``), directions, colours, value formatting.
- ``pareto``: fronts and hypervolumes in pure numpy; the one sign flip (lower-is-better objectives).
- ``compare``: paired test comparisons with the baselines; RLPrompt's learning margin.
- ``figure``: what the Pareto figure shows (:class:`ParetoPlot`); ``render``: drawing it with matplotlib.
- ``tables``: ``front.tex`` and the terminal table.
- ``report_data`` (its header in ``report_header``): what ``report.html`` shows (:class:`ReportData`);
  ``report``, ``report_plotly`` and ``report_assets``: drawing it (HTML, Plotly figures, template and script).
- ``exports``: :func:`write_exports`, which writes all of them and ``trials.parquet``.

The names below are the public surface, loaded on first use (``from sweep.results import write_exports``), so
that importing ``sweep.results.columns`` in a trial worker does not import matplotlib or plotly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweep.results.compare import compare_to_baselines
    from sweep.results.exports import Exported, write_exports
    from sweep.results.figure import ParetoPlot, pareto_plot
    from sweep.results.pareto import Fronts, compute_fronts, hypervolume_2d
    from sweep.results.render import draw
    from sweep.results.report import write_report
    from sweep.results.report_data import ReportData, compute_report
    from sweep.results.tables import front_latex, front_table_text

# Where each public name is defined (the imports above are for type checkers only).
_PUBLIC = {
    "compute_fronts": "pareto",
    "Fronts": "pareto",
    "hypervolume_2d": "pareto",
    "compare_to_baselines": "compare",
    "pareto_plot": "figure",
    "ParetoPlot": "figure",
    "draw": "render",
    "front_latex": "tables",
    "front_table_text": "tables",
    "write_exports": "exports",
    "Exported": "exports",
    "write_report": "report",
    "compute_report": "report_data",
    "ReportData": "report_data",
}
__all__ = [
    "Exported",
    "Fronts",
    "ParetoPlot",
    "ReportData",
    "compare_to_baselines",
    "compute_fronts",
    "compute_report",
    "draw",
    "front_latex",
    "front_table_text",
    "hypervolume_2d",
    "pareto_plot",
    "write_exports",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
