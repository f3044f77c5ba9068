"""Bar charts drawn on the server as SVG: no script, and the numbers beside them in text, so a
screen reader reads the same as the eye sees."""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT, GAP, PAD = 640, 160, 4, 16  # PAD: room for the first and last labels under the axis


def bar_chart(points: list[tuple[str, int | tuple[int, ...]]], label: str = "",
              series: tuple[str, ...] = ()) -> Markup:
    """`points`: (label, value) in order, or (label, (value, value, ...)) stacked bottom up, one
    value per name in `series` (drawn in the classes bar-0, bar-1, ...). Returns an <svg> (role
    img, titled) or "" when there are no points."""
    if not points:
        return Markup("")
    stacks = [(name, value if isinstance(value, tuple) else (value,)) for name, value in points]
    top = max(sum(values) for _, values in stacks) or 1
    width = max(8, (WIDTH - 2 * PAD - GAP * len(stacks)) // len(stacks))
    every = -(-len(stacks) // 8)  # at most eight labels under the axis
    parts = []
    for i, (name, values) in enumerate(stacks):
        x, base = PAD + i * (width + GAP), HEIGHT - 16
        for k, value in enumerate(values):
            h = round((HEIGHT - 20) * value / top)
            what = f"{series[k]}: " if k < len(series) else ""
            parts.append(f'<rect x="{x}" y="{base - h}" width="{width}" height="{h}" class="bar bar-{k}">'
                         f'<title>{escape(name)}: {escape(what)}{value}</title></rect>')
            base -= h
        if i % every == 0:
            parts.append(f'<text x="{x + width / 2}" y="{HEIGHT - 2}" class="axis">{escape(name[-5:])}</text>')
    title = escape(label or "chart")
    legend = "".join(f'<span class="key key-{k}">{escape(s)}</span>' for k, s in enumerate(series))
    return Markup(f'<svg role="img" aria-label="{title}" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart">'
                  f'<title>{title}</title>{"".join(parts)}</svg>' + (f'<p class="legend">{legend}</p>' if legend else ""))
