"""Bar charts drawn on the server as SVG: no script, and the numbers beside them in a table, so a
screen reader reads the same as the eye sees."""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT, GAP, PAD = 640, 160, 4, 16  # PAD: room for the first and last labels


def bar_chart(points: list[tuple[str, int]], label: str = "") -> Markup:
    """`points`: (label, value) in order. Returns an <svg> (role img, titled) or "" when empty."""
    if not points:
        return Markup("")
    top = max(v for _, v in points) or 1
    width = max(8, (WIDTH - 2 * PAD - GAP * len(points)) // len(points))
    bars = []
    every = -(-len(points) // 8)  # at most eight labels under the axis
    for i, (name, value) in enumerate(points):
        h = round((HEIGHT - 20) * value / top)
        x = PAD + i * (width + GAP)
        bars.append(f'<rect x="{x}" y="{HEIGHT - 16 - h}" width="{width}" height="{h}" class="bar">'
                    f'<title>{escape(name)}: {value}</title></rect>')
        if i % every == 0:
            bars.append(f'<text x="{x + width / 2}" y="{HEIGHT - 2}" class="axis">{escape(name[-5:])}</text>')
    title = escape(label or "chart")
    return Markup(f'<svg role="img" aria-label="{title}" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart">'
                  f'<title>{title}</title>{"".join(bars)}</svg>')
