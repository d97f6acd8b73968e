"""`ocrprune sweep`: what each keep setting buys in speed and costs in fidelity, to choose one.

Guarantees:
- The vision encoder runs once per page: each batch is encoded once, decoded unpruned as the
  reference, then decoded again from the same features at every other keep setting. Keep 1 is the
  reference itself (not decoded twice), so its fidelity and exact-match rate are exactly 1.
- Every page that goes in is accounted for. A page that cannot be rendered, or whose reference run
  fails, cannot be compared: it is listed in `skipped` with the reason and counts in no row. A page
  whose run fails at one setting only counts there as a complete mismatch (edit distance 1, not an
  exact match) and in that row's `failed`.
- Fidelity is `1 - mean normalized edit distance` of the raw model text against the reference;
  speedups are ratios of summed times over the same pages, measured in the same run.
- `sweep.json` and `sweep.png` are written atomically inside the output folder, and nowhere else.

Torch is imported inside `run_sweep` only (through the runtime), so importing this module is cheap.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import __version__
from .config import (
    GenerationSettings,
    ModelConfig,
    PruneConfig,
    RasterConfig,
    keep_label,
    parse_keep,
)
from .errors import ExitCode
from .inputs import expand_inputs
from .progress import ProgressSink
from .writers.files import atomic_write, check_writable

if TYPE_CHECKING:
    from .runtime.engine import EncodedBatch, Engine, PageOutput

log = logging.getLogger("ocrprune")

Keep = float | Literal["auto"]
DEFAULT_KEEPS: tuple[Keep, ...] = (1.0, 0.8, 0.6, 0.4, "auto")
SCHEMA = "ocrprune.sweep/1"


# ---- fidelity measures --------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; cost 1 each) between two strings.

    Common prefix and suffix are stripped first, then Hyyro's bit-parallel form of Myers' algorithm
    runs with Python integers as bit vectors: O(len(a)) big-integer steps of len(b) bits, so two
    pages of a few thousand characters take milliseconds.
    """
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    m = len(b)  # pattern: the shorter string, one bit per character
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, char in enumerate(b):
        peq[char] = peq.get(char, 0) | (1 << i)
    mask = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for char in a:
        eq = peq.get(char, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


def normalized_edit_distance(a: str, b: str) -> float:
    """Levenshtein distance / max(len(a), len(b)), in [0, 1]; 0.0 for two empty strings."""
    longest = max(len(a), len(b))
    return 0.0 if longest == 0 else levenshtein(a, b) / longest


def parse_keeps(text: str) -> tuple[Keep, ...]:
    """`"1,0.8,auto"` -> `(1.0, 0.8, "auto")`, duplicates dropped in order; ValueError if bad."""
    keeps: list[Keep] = []
    for part in text.split(","):
        if part.strip():
            keep = parse_keep(part)
            if keep_label(keep) not in {keep_label(k) for k in keeps}:
                keeps.append(keep)
    if not keeps:
        raise ValueError(f"give at least one keep setting, e.g. 1,0.6,0.4,auto (got {text!r})")
    return tuple(keeps)


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


# ---- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    """Everything one `ocrprune sweep` run needs."""

    inputs: tuple[str, ...]
    out: Path
    keeps: tuple[Keep, ...] = DEFAULT_KEEPS
    threshold: float = 0.98
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    raster: RasterConfig = field(default_factory=RasterConfig)
    method: Literal["rtprune", "norm", "random"] = "rtprune"
    seed: int = 0
    batch_size: int = 1
    glob: str | None = None

    def __post_init__(self) -> None:
        if not self.keeps:
            raise ValueError("give at least one keep setting")
        for keep in self.keeps:
            parse_keep(keep if keep == "auto" else float(keep))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        PruneConfig(keep=1.0, method=self.method, seed=self.seed)

    @property
    def labels(self) -> list[str]:
        """Setting labels, reference first, without duplicates."""
        labels = ["1"]
        for keep in self.keeps:
            if keep_label(keep) not in labels:
                labels.append(keep_label(keep))
        return labels


# ---- the run ------------------------------------------------------------------------------------


@dataclass
class _Page:
    source: str
    page: int
    image: Any


def run_sweep(
    config: SweepConfig,
    *,
    progress: ProgressSink | None = None,
    engine_factory: Callable[[], Engine] | None = None,
) -> SweepReport:
    """Render, encode once, decode per setting, compare, write `sweep.json` and `sweep.png`.

    Raises `OcrpruneError`s for run-level problems (output not writable, model will not load);
    `report.exit_code` tells how the pages went.
    """
    from .raster import DocFailed, DocOpened, PageRendered, PageStream

    check_writable(config.out)
    docs, problems = expand_inputs(list(config.inputs), glob=config.glob)
    skipped = [SkippedPage(p.path, p.page, f"{p.kind}: {p.detail}") for p in problems]
    if progress is not None:
        progress.start(len(docs) + len(problems))
    if not docs:  # nothing to compare: do not load a model for it
        report = build_report([], config.labels, config.threshold, skipped, _run_info(None, config))
        return _write(report, config.out)
    engine = engine_factory() if engine_factory is not None else _build_engine(config)
    records: list[dict[str, Any]] = []
    batch: list[_Page] = []
    waiting: dict[int, set[int]] = {}  # document index -> pages announced but not yet seen

    def flush() -> None:
        if batch:
            records.extend(_compare_batch(engine, list(batch), config, skipped))
            if progress is not None:
                progress.pages_finished(len(batch))
            batch.clear()

    try:
        with PageStream(docs, config.raster) as stream:
            for event in stream:
                if isinstance(event, DocOpened):
                    waiting[event.index] = set(event.page_numbers)
                    if progress is not None:
                        progress.pages_known(len(event.page_numbers))
                elif isinstance(event, PageRendered):
                    page = event.page
                    waiting.get(event.index, set()).discard(page.page)
                    if page.image is None:
                        reason = str(page.error) if page.error is not None else "no image"
                        skipped.append(
                            SkippedPage(event.doc.display, page.page, f"render_error: {reason}")
                        )
                        if progress is not None:
                            progress.pages_finished(1)
                        continue
                    batch.append(_Page(event.doc.display, page.page, page.image))
                    if len(batch) >= config.batch_size:
                        flush()
                elif isinstance(event, DocFailed):
                    reason = f"{event.error.kind}: {event.error.detail}"
                    missing = sorted(waiting.pop(event.index, set()))
                    for number in missing or [event.error.page]:
                        skipped.append(SkippedPage(event.doc.display, number, reason))
            flush()
    finally:
        if progress is not None:
            progress.close()
    report = build_report(
        records, config.labels, config.threshold, skipped, _run_info(engine, config)
    )
    return _write(report, config.out)


def _write(report: SweepReport, out: Path) -> SweepReport:
    atomic_write(out / "sweep.json", report.to_json())
    atomic_write(out / "sweep.png", render_sweep_png(report))
    return replace(report, out=out)


def _build_engine(config: SweepConfig) -> Engine:
    from .runtime.engine import Engine
    from .runtime.loading import load_model

    loaded = load_model(config.model)
    if loaded.dummy:
        log.warning(
            "using the tiny-random model: its text is meaningless (for tests and demos only)"
        )
    return Engine(
        loaded, config.generation, PruneConfig(keep=1.0, method=config.method, seed=config.seed)
    )


def _run_info(engine: Engine | None, config: SweepConfig) -> dict[str, Any]:
    loaded = engine.loaded if engine is not None else None
    return {
        "model": loaded.model_id if loaded else config.model.model,
        "revision": loaded.revision if loaded else config.model.revision,
        "dummy_model": loaded.dummy if loaded else config.model.is_tiny_random,
        "device": str(loaded.device) if loaded else config.model.device,
        "dtype": ("bf16" if str(loaded.dtype).endswith("bfloat16") else "fp32")
        if loaded
        else config.model.dtype,
        "mode": config.generation.mode,
        "prompt": config.generation.prompt,
        "max_new_tokens": config.generation.max_new_tokens,
        "method": config.method,
        "batch_size": config.batch_size,
        "ocrprune_version": __version__,
    }


def _compare_batch(
    engine: Engine, pages: list[_Page], config: SweepConfig, skipped: list[SkippedPage]
) -> list[dict[str, Any]]:
    """Encode once; reference decode; one decode per other setting. Failures become records."""
    try:
        encoded = engine.encode([p.image for p in pages])
        reference = engine.decode(
            encoded, prune=PruneConfig(keep=1.0, method=config.method, seed=config.seed)
        )
    except Exception as exc:  # noqa: BLE001 - the per-page boundary: record and go on
        _recover(engine)
        if len(pages) > 1:
            return [r for p in pages for r in _compare_batch(engine, [p], config, skipped)]
        skipped.append(
            SkippedPage(pages[0].source, pages[0].page, f"model_error: {type(exc).__name__}: {exc}")
        )
        return []
    records = [_record(p, "1", ref, ref) for p, ref in zip(pages, reference)]
    for keep in config.keeps:
        label = keep_label(keep)
        if label == "1" or label in records[0]["settings"]:
            continue
        outputs = _decode_each(
            engine, encoded, PruneConfig(keep=keep, method=config.method, seed=config.seed)
        )
        for record, page, ref, out in zip(records, pages, reference, outputs):
            if isinstance(out, Exception):
                log.warning("%s page %d: keep %s failed: %s", page.source, page.page, label, out)
                record["settings"][label] = {
                    "status": "model_error",
                    "error": str(out),
                    "ned": 1.0,
                    "exact": False,
                }
            else:
                record["settings"][label] = _record(page, label, out, ref)["settings"][label]
    return records


def _decode_each(engine: Engine, encoded: EncodedBatch, prune: PruneConfig) -> list[Any]:
    """Decode a batch; if it fails, decode its pages one by one from the same features."""
    try:
        return list(engine.decode(encoded, prune=prune))
    except Exception as exc:  # noqa: BLE001 - the per-page boundary
        _recover(engine)
        if len(encoded.features) == 1:
            return [exc]
        return [
            _decode_each(engine, _one_page(encoded, i), prune)[0]
            for i in range(len(encoded.features))
        ]


def _one_page(encoded: EncodedBatch, i: int) -> EncodedBatch:
    """Page `i` of an encoded batch, for decoding alone (decode reads no local pixels)."""
    from .runtime.engine import EncodedBatch
    from .runtime.preprocess import VisionBatch

    vision = encoded.vision
    count = len(encoded.features)
    alone = VisionBatch(
        pixel_values=vision.pixel_values[i : i + 1],
        pixel_values_local=None,
        num_local_patches=vision.num_local_patches[i : i + 1],
        patches_grid=vision.patches_grid[i : i + 1],
        geometry=vision.geometry[i : i + 1],
    )
    return EncodedBatch(
        alone, [encoded.features[i]], encoded.preprocess_ms / count, encoded.encode_ms / count
    )


def _recover(engine: Engine) -> None:
    recover = getattr(engine, "recover", None)
    if recover is not None:
        recover()


def _record(page: _Page, label: str, out: PageOutput, ref: PageOutput) -> dict[str, Any]:
    ned = normalized_edit_distance(out.raw_text, ref.raw_text)
    tokens = out.tokens
    return {
        "source": page.source,
        "page": page.page,
        "settings": {
            label: {
                "status": out.status,
                "ned": ned,
                "exact": out.raw_text == ref.raw_text,
                "ratio": out.keep.ratio,
                "visual_total": tokens.visual_total,
                "visual_kept": tokens.visual_kept,
                "prompt": tokens.prompt,
                "prompt_unpruned": tokens.prompt_unpruned,
                "generated": tokens.generated,
                "prefill_ms": out.prefill_ms,
                "total_ms": out.encode_ms + out.prune_ms + out.prefill_ms + out.decode_ms,
            }
        },
    }


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


__all__ = [
    "DEFAULT_KEEPS",
    "SettingRow",
    "SkippedPage",
    "SweepConfig",
    "SweepReport",
    "build_report",
    "levenshtein",
    "normalized_edit_distance",
    "parse_keeps",
    "recommend",
    "render_sweep_png",
    "render_sweep_table",
    "run_sweep",
]
