"""The dashboard's inline SVG charts (api/charts.py): pure functions of the numbers."""

from __future__ import annotations

import re

from api.charts import stacked_bars


def test_bars_are_stacked_and_scaled_to_the_tallest() -> None:
    """The tallest minute fills the plot; each key is one rect per minute it has."""
    svg = stacked_bars([{"a": 1, "b": 1}, {"a": 4}], ["11:00", "11:01"], title="t",
                       height=140)

    heights = [float(h) for h in re.findall(r'<rect x="[^"]+" y="[^"]+" width="[^"]+" '
                                            r'height="([^"]+)"', svg)]

    assert [28.5, 28.5, 114.0] == heights  # plot 114 px high: 1/4, 1/4, 4/4


def test_labels_and_keys_are_escaped() -> None:
    """A reason or label can hold markup: it is text in the SVG, never markup."""
    svg = stacked_bars([{"<b>x</b>": 1}], ["<i>"], title="<t>")

    assert "<b>" not in svg and "<i>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg


def test_an_empty_hour_says_so() -> None:
    """No counts: the axes, no bars, and a note instead of a legend."""
    svg = stacked_bars([{}, {}], ["11:00", "11:01"], title="t")

    assert "<rect" not in svg and "nothing in this hour" in svg
