"""Inline SVG charts for the dashboard, drawn on the server (no JavaScript, no CDN).

Pure functions of the numbers: one bar per minute, stacked by series (a reason, a
channel). Colours are SVG attributes, not ``style``: the dashboard's Content-Security-Policy
allows no inline styles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["PALETTE", "stacked_bars"]

PALETTE = ("#3b6ea5", "#e07b39", "#5a9e4b", "#c23b3b", "#8a63b8", "#8c6d46", "#d36fb0",
           "#6f6f6f", "#b8b82e", "#2eb8b8")


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"


def stacked_bars(rows: Sequence[Mapping[str, float]], labels: Sequence[str], *, title: str,
                 unit: str = "", width: int = 720, height: int = 140) -> Markup:
    """One bar per row (``labels`` under the first and last), each stacked by its keys in
    sorted order; a legend names the keys and their totals."""
    keys = sorted({k for row in rows for k in row})
    colour = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    top = max((sum(row.values()) for row in rows), default=0.0) or 1.0
    pad_left, plot_h = 44, height - 18 - 8  # 18 px under the bars for the labels
    bar_w = (width - pad_left) / max(1, len(rows))
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
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
                         f'fill="{colour[k]}"><title>{escape(labels[i])} {escape(k)}: '
                         f"{escape(_number(value))}{escape(unit)}</title></rect>")
    if labels:
        parts.append(f'<text x="{pad_left}" y="{height - 4}" font-size="10">'
                     f"{escape(labels[0])}</text>")
        parts.append(f'<text x="{width}" y="{height - 4}" font-size="10" '
                     f'text-anchor="end">{escape(labels[-1])}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
        f'fill="{colour[k]}"/></svg> {escape(k)}</li>' for k in keys)
    return Markup("".join(parts) + (f'<ul class="legend">{legend}</ul>' if keys else
                                    '<p class="muted">nothing in this hour</p>'))
