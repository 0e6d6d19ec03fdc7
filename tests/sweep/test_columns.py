"""Tests of sweep.results.columns: the one writing of a direction, a duration and a number, and the cell readers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from sweep.results.columns import arrow, cell_text, cell_value, direction_words, duration, formatted, rgba


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (9.6, "9.6 s"),
        (0, "0.0 s"),
        (59.94, "59.9 s"),
        (59.96, "1 min 00 s"),
        (67.0, "1 min 07 s"),
        (75.4, "1 min 15 s"),
        (3599.4, "59 min 59 s"),
        (3725, "1 h 02 min"),
        (90061, "25 h 01 min"),
        ("12.5", "12.5 s"),
        (math.nan, "–"),
        (math.inf, "–"),
        ("soon", "soon"),
        (None, "None"),
    ],
)
def test_duration(seconds: object, text: str):
    assert duration(seconds) == text


def test_directions_from_the_registry():
    assert arrow("task/acc_dev") == "↑" and arrow("interp/log_ppl") == "↓"
    assert arrow("task/acc_dev", latex=True) == r"$\uparrow$" and arrow("faith/dist", latex=True) == r"$\downarrow$"
    assert direction_words("interp/scrutability") == "higher is better"
    assert direction_words("interp/log_ppl") == "lower is better"
    with pytest.raises(KeyError, match="task/acc_dev"):
        arrow("task/acc_dve")


def test_formatted_and_rgba():
    assert formatted(0.12345) == "0.123" and formatted(2.5, ".3g") == "2.5" and formatted("0.5", ".1f") == "0.5"
    assert formatted(math.nan) == "–" and formatted(None, missing="--") == "--" and formatted("x", missing="") == ""
    assert rgba("#666666", 0.12) == "rgba(102,102,102,0.12)" and rgba("red", 0.5) == "red"


def test_cell_readers():
    table = pd.DataFrame({"a": [1.5, None], "t": ["x", None], "n": ["1", "y"]})
    assert cell_value(table, "a", 0) == 1.5 and math.isnan(cell_value(table, "a", 1))
    assert math.isnan(cell_value(table, "missing", 0)) and math.isnan(cell_value(table, "n", 1))
    assert cell_text(table, "t", 0) == "x" and cell_text(table, "t", 1) == "" and cell_text(table, "missing", 0) == ""


def test_the_public_surface_loads_on_first_use():
    import subprocess
    import sys

    import sweep.results

    for name in sweep.results.__all__:
        assert getattr(sweep.results, name).__name__ == name
    # The vocabulary alone pulls in neither the figure's nor the page's libraries, nor torch: trial workers import it.
    code = "import sys, sweep.results.columns; print(sorted({'matplotlib', 'plotly', 'torch'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
