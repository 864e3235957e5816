"""The dashboard's inline SVG charts (api/charts.py): pure functions of the numbers."""

from __future__ import annotations

import re
from typing import get_args

from api.charts import colour, stacked_bars
from streams.events import EVENT_TYPES, Channel
from tables.gate import REASONS


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


def test_a_series_keeps_its_colour_whatever_else_is_drawn() -> None:
    """Two accounts with different channels: sms is the same colour in both (it was the
    n-th colour of the n-th key drawn), known or not."""
    channels = ("sms", "mms", "email")
    one = stacked_bars([{"sms": 1, "custom": 1}], ["11:00"], title="t", series=channels)
    other = stacked_bars([{"email": 1, "mms": 2, "sms": 3, "custom": 1, "another": 1}],
                         ["11:00"], title="t", series=channels)

    def fills(svg: str) -> dict[str, str]:
        return dict(re.findall(r'<li data-series="([^"]+)">.*?fill="([^"]+)"', svg))

    assert fills(one)["sms"] == fills(other)["sms"] == colour("sms", channels)
    assert fills(one)["custom"] == fills(other)["custom"] == colour("custom")


def test_the_known_series_of_a_chart_have_distinct_colours() -> None:
    """Every event type, channel and non-send reason has a colour of its own on its chart."""
    for series in (EVENT_TYPES, get_args(Channel), REASONS):
        assert len({colour(k, series) for k in series}) == len(series), series


def test_a_chart_is_as_wide_as_its_card() -> None:
    """No fixed pixel width: 100% of the card, the viewBox keeps the proportions."""
    svg = stacked_bars([{"a": 1}], ["11:00"], title="t")

    assert re.search(r'<svg class="chart" role="img" width="100%" viewBox="0 0 \d+ \d+"',
                     svg)
