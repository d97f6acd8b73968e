"""Sweep results: per-setting rows, the recommendation, and their table and PNG renderings.

Plain values only (no torch); the PNG is drawn with Pillow, which ocrprune already depends on.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ocrprune.errors import ExitCode

SCHEMA = "ocrprune.sweep/1"


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingRow:
    """One keep setting over every compared page; times are sums in milliseconds."""

    keep: str  # as typed for --keep: "1", "0.4", "auto"
    pages: int  # pages compared at this setting
    failed: int  # pages whose run failed here (counted as edit distance 1)
    not_ok: int  # pages that ended without end-of-sequence (repetition or timeout)
    visual_total: int
    visual_kept: int
    kept_share: float  # visual_kept / visual_total
    mean_ratio: float  # mean keep ratio used (auto: RTPrune's per-page r)
    prompt_tokens: int
    prompt_tokens_unpruned: int
    generated_tokens: int
    prefill_ms: float
    total_ms: float  # encode + prune + prefill + decode
    prefill_speedup: float  # reference prefill / this prefill, same pages
    total_speedup: float
    fidelity: float  # 1 - mean normalized edit distance to the reference text
    exact_match: float  # share of pages whose text equals the reference exactly


@dataclass(frozen=True)
class SkippedPage:
    source: str
    page: int | None  # None: the whole document could not be opened
    reason: str


@dataclass(frozen=True)
class SweepReport:
    rows: tuple[SettingRow, ...]
    recommended: str | None
    threshold: float
    pages_compared: int
    skipped: tuple[SkippedPage, ...]
    info: dict[str, Any]
    pages: tuple[dict[str, Any], ...] = ()
    out: Path | None = None

    @property
    def exit_code(self) -> ExitCode:
        if self.pages_compared == 0:
            return ExitCode.NOTHING_SUCCEEDED
        if self.skipped or any(row.failed for row in self.rows):
            return ExitCode.PARTIAL
        return ExitCode.OK

    def to_json(self) -> str:
        payload = {
            "schema": SCHEMA,
            **self.info,
            "threshold": self.threshold,
            "recommended": self.recommended,
            "pages_compared": self.pages_compared,
            "skipped": [asdict(s) for s in self.skipped],
            "settings": [asdict(r) for r in self.rows],
            "pages": list(self.pages),
        }
        return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"


def recommend(rows: Sequence[SettingRow], threshold: float) -> str | None:
    """The setting with the smallest share of visual tokens kept whose fidelity >= `threshold`.

    Ties go to the higher fidelity. Rows that compared no page never qualify; None if none does.
    """
    eligible = [r for r in rows if r.pages > 0 and r.fidelity >= threshold]
    if not eligible:
        return None
    return min(eligible, key=lambda r: (r.kept_share, -r.fidelity)).keep


# ---- aggregation and rendering -----------------------------------------------------------------


def build_report(
    records: Sequence[dict[str, Any]],
    labels: Sequence[str],
    threshold: float,
    skipped: Sequence[SkippedPage],
    info: dict[str, Any],
) -> SweepReport:
    """Sum per-page records (see `_record`) into one row per setting and pick a recommendation."""
    rows = tuple(_row(label, records) for label in labels) if records else ()
    return SweepReport(
        rows=rows,
        recommended=recommend(rows, threshold),
        threshold=threshold,
        pages_compared=len(records),
        skipped=tuple(skipped),
        info=info,
        pages=tuple(records),
    )


def _row(label: str, records: Sequence[dict[str, Any]]) -> SettingRow:
    runs = [r["settings"][label] for r in records]
    refs = [r["settings"]["1"] for r in records]
    ok = [(run, ref) for run, ref in zip(runs, refs) if "prefill_ms" in run]

    def total(key: str, which: int = 0) -> float:
        return sum(pair[which][key] for pair in ok)

    visual_total = int(total("visual_total"))
    return SettingRow(
        keep=label,
        pages=len(runs),
        failed=len(runs) - len(ok),
        not_ok=sum(1 for run, _ in ok if run["status"] != "ok"),
        visual_total=visual_total,
        visual_kept=int(total("visual_kept")),
        kept_share=total("visual_kept") / visual_total if visual_total else 0.0,
        mean_ratio=total("ratio") / len(ok) if ok else 0.0,
        prompt_tokens=int(total("prompt")),
        prompt_tokens_unpruned=int(total("prompt_unpruned")),
        generated_tokens=int(total("generated")),
        prefill_ms=total("prefill_ms"),
        total_ms=total("total_ms"),
        prefill_speedup=_ratio(total("prefill_ms", 1), total("prefill_ms")),
        total_speedup=_ratio(total("total_ms", 1), total("total_ms")),
        fidelity=1.0 - sum(run["ned"] for run in runs) / len(runs),
        exact_match=sum(1 for run in runs if run["exact"]) / len(runs),
    )


def _ratio(reference: float, value: float) -> float:
    return reference / value if value > 0 else 0.0


def render_sweep_table(report: SweepReport) -> str:
    """The table the CLI prints on stderr."""
    info = report.info
    lines = [
        (
            f"sweep: {report.pages_compared} page(s) compared, {len(report.skipped)} skipped; model "
            f"{info.get('model')} on {info.get('device')} ({info.get('dtype')}), mode {info.get('mode')}, "
            f"method {info.get('method')}"
        ),
    ]
    if info.get("dummy_model"):
        lines.append("warning: tiny-random model: its text is meaningless, so are these fidelities")
    header = f"{'keep':<6} {'visual kept':>18} {'prompt':>8} {'prefill':>8} {'total':>7} {'fidelity':>9} {'exact':>7} {'failed':>6}"
    lines += [header, "-" * len(header)]
    for r in report.rows:
        kept = f"{r.visual_kept:,} {100 * r.kept_share:5.1f}%"
        lines.append(
            f"{r.keep:<6} {kept:>18} {r.prompt_tokens:>8,} {r.prefill_speedup:>7.2f}x {r.total_speedup:>6.2f}x "
            f"{r.fidelity:>9.4f} {100 * r.exact_match:>6.1f}% {r.failed:>6}"
        )
    for s in report.skipped:
        where = s.source if s.page is None else f"{s.source} page {s.page}"
        lines.append(f"skipped {where}: {s.reason}")
    if report.recommended is not None:
        lines.append(
            f"recommended: --keep {report.recommended} (fewest visual tokens with fidelity >= {report.threshold:g})"
        )
    else:
        lines.append(f"recommended: none (no setting reached fidelity {report.threshold:g})")
    if report.out is not None:
        lines.append(f"outputs in {report.out}/ (sweep.json, sweep.png)")
    return "\n".join(lines) + "\n"


def render_sweep_png(report: SweepReport, size: tuple[int, int] = (800, 520)) -> bytes:
    """Speedup (y) against fidelity (x) per setting: prefill and total series, threshold line."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 70, 60, 40, 60
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    rows = report.rows
    xs = _ticks(min([r.fidelity for r in rows] + [report.threshold]), 1.0)
    ys = _ticks(0.0, max([v for r in rows for v in (r.prefill_speedup, r.total_speedup)] + [1.0]))
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]

    def at(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    for x in xs:
        px, _ = at(x, y0)
        draw.text((px - 12, height - bottom + 6), f"{x:g}", fill="black")
    for y in ys:
        _, py = at(x0, y)
        draw.line([left, py, width - right, py], fill="#e5e5e5")
        draw.text((left - 40, py - 6), f"{y:g}x", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    tx, _ = at(report.threshold, y0)
    for yy in range(top, height - bottom, 8):
        draw.line([tx, yy, tx, yy + 4], fill="gray")
    draw.text((tx - 95, top + 4), f"threshold {report.threshold:g}", fill="gray")
    for color, value in (("royalblue", "prefill_speedup"), ("darkorange", "total_speedup")):
        points = sorted((r.fidelity, getattr(r, value), r.keep) for r in rows)
        if len(points) > 1:
            draw.line([at(x, y) for x, y, _ in points], fill=color, width=2)
        for x, y, label in points:
            px, py = at(x, y)
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
            draw.text((px + 6, py - 12), label, fill=color)
    draw.text(
        (left, 12),
        f"speedup vs fidelity, mode {report.info.get('mode')} (blue: prefill, orange: total)",
        fill="black",
    )
    draw.text(
        (width // 2 - 120, height - 24),
        "fidelity (1 - mean normalized edit distance)",
        fill="black",
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round axis ticks covering [low, high] (at least two)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high <= low:
        low, high = low - 0.05, high + 0.05
    raw = (high - low) / (count - 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(f for f in (1, 2, 2.5, 5, 10) if raw <= f * step)
    first = math.floor(low / step + 1e-9) * step
    ticks = [round(first + i * step, 10) for i in range(count + 2)]
    return [t for t in ticks if t <= high + step * (1 - 1e-9)][: count + 1]
