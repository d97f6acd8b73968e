"""Small PNG charts drawn with Pillow (already a dependency), so benchmarks need no plotting library.

`line_chart` draws numeric or categorical x against y for several named series; `bar_chart` draws
stacked bars. Both return PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
SIZE = (900, 560)
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 50, 70


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * step:
            step *= factor
            break
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


class _Frame:
    def __init__(
        self, title: str, x_label: str, y_label: str, y_range: tuple[float, float]
    ) -> None:
        self.image = Image.new("RGB", SIZE, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.w, self.h = SIZE
        ticks = _nice_ticks(*y_range)
        self.y0, self.y1 = ticks[0], ticks[-1]
        d = self.draw
        d.text((LEFT, 8), title, fill="black")
        d.text(
            (LEFT + (self.w - LEFT - RIGHT) // 2 - 4 * len(x_label), self.h - 25),
            x_label,
            fill="black",
        )
        d.text((8, TOP - 16), y_label, fill="black")
        d.rectangle([LEFT, TOP, self.w - RIGHT, self.h - BOTTOM], outline="black")
        for t in ticks:
            y = self.py(t)
            d.line([LEFT - 4, y, self.w - RIGHT, y], fill="#e5e5e5")
            d.text((LEFT - 8 - 6 * len(_fmt(t)), y - 6), _fmt(t), fill="black")
        d.rectangle([LEFT, TOP, self.w - RIGHT, self.h - BOTTOM], outline="black")

    def py(self, y: float) -> float:
        return (
            self.h - BOTTOM - (y - self.y0) / (self.y1 - self.y0 or 1.0) * (self.h - TOP - BOTTOM)
        )

    def legend(self, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            y = TOP + 10 + 18 * i
            x = self.w - RIGHT + 12
            self.draw.rectangle([x, y, x + 12, y + 10], fill=PALETTE[i % len(PALETTE)])
            self.draw.text((x + 18, y - 1), name, fill="black")

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG")
        return buffer.getvalue()


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_names: Sequence[str] | None = None,
    hline: tuple[float, str] | None = None,
) -> bytes:
    """Series of (x, y) points; with `x_names`, x is an index into those category names."""
    xs = [x for pts in series.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in series.values() for _, y in pts if math.isfinite(y)] or [0.0, 1.0]
    if hline is not None:
        ys.append(hline[0])
    frame = _Frame(title, x_label, y_label, (min(0.0, min(ys)), max(ys) * 1.05))
    x0, x1 = (min(xs), max(xs)) if max(xs) > min(xs) else (min(xs) - 1, max(xs) + 1)
    pad = (x1 - x0) * 0.05

    def px(x: float) -> float:
        return LEFT + (x - x0 + pad) / (x1 - x0 + 2 * pad) * (frame.w - LEFT - RIGHT)

    ticks = list(range(len(x_names))) if x_names else _nice_ticks(x0, x1)
    for t in ticks:
        if x0 - pad <= t <= x1 + pad:
            label = x_names[int(t)] if x_names else _fmt(t)
            frame.draw.text((px(t) - 3 * len(label), frame.h - BOTTOM + 6), label, fill="black")
    if hline is not None:
        y = frame.py(hline[0])
        for x in range(LEFT, frame.w - RIGHT, 10):
            frame.draw.line([x, y, x + 5, y], fill="gray")
        frame.draw.text((LEFT + 5, y - 14), hline[1], fill="gray")
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = [(px(x), frame.py(y)) for x, y in sorted(pts) if math.isfinite(y)]
        if len(points) > 1:
            frame.draw.line(points, fill=color, width=2)
        for x, y in points:
            frame.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    frame.legend(list(series))
    return frame.png()


def bar_chart(
    title: str,
    y_label: str,
    categories: Sequence[str],
    stacks: Mapping[str, Sequence[float]],
) -> bytes:
    """One stacked bar per category; `stacks[name][i]` is that part's height in category i."""
    totals = [sum(values[i] for values in stacks.values()) for i in range(len(categories))]
    frame = _Frame(title, "", y_label, (0.0, max(totals + [1e-9]) * 1.05))
    slot = (frame.w - LEFT - RIGHT) / max(len(categories), 1)
    for i, category in enumerate(categories):
        x = LEFT + slot * i + slot * 0.2
        bottom = 0.0
        for k, values in enumerate(stacks.values()):
            top = bottom + values[i]
            frame.draw.rectangle(
                [x, frame.py(top), x + slot * 0.6, frame.py(bottom)], fill=PALETTE[k % len(PALETTE)]
            )
            bottom = top
        label = category
        frame.draw.text(
            (x + slot * 0.3 - 3 * len(label), frame.h - BOTTOM + 6), label, fill="black"
        )
        frame.draw.text((x, frame.py(totals[i]) - 14), _fmt(totals[i]), fill="black")
    frame.legend(list(stacks))
    return frame.png()
