"""Inline SVG charts for the dashboard, drawn on the server (no JavaScript, no CDN).

Pure functions of the numbers: one bar per minute, stacked by series (a reason, a
channel). Colours are SVG attributes, not ``style``: the dashboard's Content-Security-Policy
allows no inline styles. A chart is as wide as its card (``width="100%"``, its
``viewBox`` keeps the proportions). A series has the same colour on every chart of a kind
and in every account: a known series (``series``, e.g. the event types) by its place in
that fixed list, any other by a hash of its name — never by which series happen to be
drawn.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["PALETTE", "colour", "rate_bars", "stacked_bars"]

#: Twenty colours, the saturated ten first (Tableau 20): the largest family of series,
#: the 17 event types, gets a colour each.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#9d7660", "#d37295",
           "#79706e", "#b6992d", "#499894", "#a0cbe8", "#ffbe7d", "#8cd17d", "#ff9d9a",
           "#d4a6c8", "#d7b5a6", "#fabfd2", "#bab0ac", "#f1ce63", "#86bcb6")


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def colour(key: str, series: Sequence[str] = ()) -> str:
    """``key``'s colour: by its place in ``series`` (the known ones, in a fixed order),
    else by a hash of its name."""
    if key in series:
        return PALETTE[series.index(key) % len(PALETTE)]
    return PALETTE[zlib.crc32(key.encode()) % len(PALETTE)]


def stacked_bars(rows: Sequence[Mapping[str, float]], labels: Sequence[str], *, title: str,
                 unit: str = "", series: Sequence[str] = (), width: int = 1000,
                 height: int = 140) -> Markup:
    """One bar per row (``labels`` under the first and last), each stacked by its keys
    (the known ``series`` in their order, then the others by name); a legend names them.
    ``width`` and ``height`` are the ``viewBox``: the chart scales to its card's width."""
    present = {k for row in rows for k in row}
    keys = [k for k in series if k in present] + sorted(present - set(series))
    colours = {k: colour(k, series) for k in keys}
    top = max((sum(row.values()) for row in rows), default=0.0) or 1.0
    pad_left, plot_h = 44, height - 18 - 8  # 18 px under the bars for the labels
    bar_w = (width - pad_left) / max(1, len(rows))
    parts = [f'<svg class="chart" role="img" width="100%" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{pad_left}" y1="8" x2="{pad_left}" y2="{8 + plot_h}" '
             f'stroke="#999"/>',
             f'<line x1="{pad_left}" y1="{8 + plot_h}" x2="{width}" y2="{8 + plot_h}" '
             f'stroke="#999"/>',
             f'<text x="{pad_left - 4}" y="14" text-anchor="end" font-size="10">'
             f"{escape(_number(top))}{escape(unit)}</text>",
             f'<text x="{pad_left - 4}" y="{8 + plot_h}" text-anchor="end" '
             f'font-size="10">0</text>']
    for i, row in enumerate(rows):
        y = float(8 + plot_h)
        for k in keys:
            value = row.get(k, 0.0)
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(f'<rect x="{pad_left + i * bar_w + 0.5:.1f}" y="{y:.1f}" '
                         f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{colours[k]}"><title>{escape(labels[i])} {escape(k)}: '
                         f"{escape(_number(value))}{escape(unit)}</title></rect>")
    if labels:
        parts.append(f'<text x="{pad_left}" y="{height - 4}" font-size="10">'
                     f"{escape(labels[0])}</text>")
        parts.append(f'<text x="{width}" y="{height - 4}" font-size="10" '
                     f'text-anchor="end">{escape(labels[-1])}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<li data-series="{escape(k)}"><svg width="10" height="10" aria-hidden="true">'
        f'<rect width="10" height="10" fill="{colours[k]}"/></svg> {escape(k)}</li>'
        for k in keys)
    return Markup("".join(parts) + (f'<ul class="legend">{legend}</ul>' if keys else
                                    '<p class="muted">nothing in this hour</p>'))


def rate_bars(arms: Sequence[Mapping[str, object]], *, title: str, width: int = 1000,
              height: int = 180) -> Markup:
    """One bar per experiment arm: its conversion rate, with its interval as a whisker;
    the arm's name and rate under it (``arms``: the report's rows)."""
    top = max((float(a["rate_interval"][1]) for a in arms  # type: ignore[index]
               ), default=0.0) or 1.0
    pad_left, plot_h = 44, height - 32 - 8
    slot = (width - pad_left) / max(1, len(arms))
    base = 8 + plot_h
    parts = [f'<svg class="chart" role="img" width="100%" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg">', f"<title>{escape(title)}</title>",
             f'<line x1="{pad_left}" y1="{base}" x2="{width}" y2="{base}" stroke="#999"/>',
             f'<text x="{pad_left - 4}" y="14" text-anchor="end" font-size="10">'
             f"{top:.0%}</text>",
             f'<text x="{pad_left - 4}" y="{base}" text-anchor="end" font-size="10">0</text>']
    for i, arm in enumerate(arms):
        name, rate = str(arm["variant"]), float(arm["rate"])  # type: ignore[arg-type]
        low, high = (float(v) for v in arm["rate_interval"])  # type: ignore[attr-defined]
        x, w = pad_left + i * slot + slot * 0.2, slot * 0.6
        h = plot_h * rate / top
        mid = x + w / 2
        parts.append(f'<rect data-arm="{escape(name)}" x="{x:.1f}" y="{base - h:.1f}" '
                     f'width="{w:.1f}" height="{h:.1f}" fill="{colour(name)}"><title>'
                     f"{escape(name)}: {rate:.1%} ({low:.1%} to {high:.1%})</title></rect>")
        y_low, y_high = base - plot_h * low / top, base - plot_h * high / top
        parts.append(f'<line x1="{mid:.1f}" y1="{y_low:.1f}" x2="{mid:.1f}" '
                     f'y2="{y_high:.1f}" stroke="#333"/>')
        for y in (y_low, y_high):
            parts.append(f'<line x1="{mid - 6:.1f}" y1="{y:.1f}" x2="{mid + 6:.1f}" '
                         f'y2="{y:.1f}" stroke="#333"/>')
        parts.append(f'<text x="{mid:.1f}" y="{height - 6}" text-anchor="middle" '
                     f'font-size="11">{escape(name)} · {rate:.1%}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
