"""Small SVG charts drawn on the server, for the dashboard: no chart library, no script, nothing to
vendor or keep patched, and they render under a strict Content-Security-Policy. Each bar or point
carries a ``<title>`` (the browser's tooltip) with its exact value."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 180, 70, 22, 10
COLOURS = ("#3b6fd8", "#d8553b", "#3ba86b", "#a03bd8")


def _scale(peak: float) -> float:
    """A round top for the y axis at or above ``peak`` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= peak:
        step *= 10
    while step > peak * 10:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= peak:
            return step * factor
    return step * 10


def _frame(title: str, top: float, labels: Sequence[str], unit: str, body: str) -> str:
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    first, last = (labels[0], labels[-1]) if labels else ("", "")
    return (
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">'
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}" class="axis"/>'
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH}" y2="{PAD_TOP + plot_h}" class="axis"/>'
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" class="tick" text-anchor="end">{_num(top)}{unit}</text>'
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" class="tick" text-anchor="end">0</text>'
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 4}" class="tick">{escape(first)}</text>'
        f'<text x="{WIDTH}" y="{HEIGHT - 4}" class="tick" text-anchor="end">{escape(last)}</text>'
        f"{body}</svg></figure>"
    )


def bars(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], unit: str = ""
) -> str:
    """Grouped bars, one group per label (a time bucket), one bar per series."""
    peak = max((v for _, values in series for v in values), default=0.0)
    top = _scale(peak)
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(1, len(labels))
    width = max(1.0, slot * 0.8 / max(1, len(series)))
    parts = []
    for s, (name, values) in enumerate(series):
        for i, value in enumerate(values):
            if not value:
                continue
            h = plot_h * value / top
            x = PAD_LEFT + i * slot + slot * 0.1 + s * width
            parts.append(
                f'<rect x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{width:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[s % len(COLOURS)]}" data-series="{escape(name)}" data-value="{value:g}">'
                f"<title>{escape(labels[i])}: {_num(value)}{unit} {escape(name)}</title></rect>"
            )
    return _frame(title, top, labels, unit, "".join(parts) + _legend(series))


def lines(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], unit: str = ""
) -> str:
    """One polyline per series (missing values break nothing: the point is skipped)."""
    peak = max((v for _, values in series for v in values if v is not None), default=0.0)
    top = _scale(peak)
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = plot_w / max(1, len(labels))
    parts = []
    for s, (name, values) in enumerate(series):
        colour = COLOURS[s % len(COLOURS)]
        points = [
            (PAD_LEFT + slot * (i + 0.5), PAD_TOP + plot_h - plot_h * v / top, labels[i], v)
            for i, v in enumerate(values)
            if v is not None
        ]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" data-series="{escape(name)}" '
            f'data-value="{v:g}"><title>{escape(label)}: {_num(v)}{unit} {escape(name)}</title></circle>'
            for x, y, label, v in points
        ]
    return _frame(title, top, labels, unit, "".join(parts) + _legend(series))


def _legend(series: Sequence[tuple[str, Sequence[float | None]]]) -> str:
    return "".join(
        f'<text x="{PAD_LEFT + 8}" y="{PAD_TOP + 12 + 14 * s}" class="legend" '
        f'fill="{COLOURS[s % len(COLOURS)]}">{escape(name)}</text>'
        for s, (name, _) in enumerate(series)
    )


def _num(value: float) -> str:
    return f"{value:.4g}" if value < 1 else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
