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

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ocrprune import __version__
from ocrprune.config import (
    GenerationSettings,
    Keep,
    ModelConfig,
    PruneConfig,
    RasterConfig,
    check_keep,
    keep_label,
    parse_keep,
)
from ocrprune.inputs import expand_inputs
from ocrprune.progress import ProgressSink
from ocrprune.run.batching import BatchFailure, run_split
from ocrprune.run.driver import StreamHandler, drive
from ocrprune.runtime import open_backend
from ocrprune.runtime.api import POSITIONS
from ocrprune.sweep.fidelity import levenshtein, normalized_edit_distance
from ocrprune.sweep.report import (
    SCHEMA,
    SettingRow,
    SkippedPage,
    SweepReport,
    build_report,
    recommend,
    render_sweep_png,
    render_sweep_table,
)
from ocrprune.writers.files import atomic_write, check_writable

if TYPE_CHECKING:
    from ocrprune.raster import DocFailed, DocOpened, PageRendered
    from ocrprune.runtime.api import EncodingBackend, PageOutput

log = logging.getLogger("ocrprune")

DEFAULT_KEEPS: tuple[Keep, ...] = (1.0, 0.8, 0.6, 0.4, "auto")


def parse_keeps(text: str) -> tuple[Keep, ...]:
    """`"1,0.8,auto"` -> `(1.0, 0.8, "auto")`, duplicates dropped in order; ValueError if bad.
    Each part goes through `parse_keep`, and duplicates are told apart by `keep_label`."""
    keeps: list[Keep] = []
    for part in text.split(","):
        if part.strip():
            keep = parse_keep(part)
            if keep_label(keep) not in {keep_label(k) for k in keeps}:
                keeps.append(keep)
    if not keeps:
        raise ValueError(f"give at least one keep setting, e.g. 1,0.6,0.4,auto (got {text!r})")
    return tuple(keeps)


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
    engine: Literal["hf", "vllm"] = "hf"

    def __post_init__(self) -> None:
        if not self.keeps:
            raise ValueError("give at least one keep setting")
        for keep in self.keeps:
            check_keep(keep)
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.engine not in POSITIONS:
            raise ValueError(f"unknown engine {self.engine!r}; use hf or vllm")
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


class _SweepPages(StreamHandler[_Page]):
    """Sweep's side of the shared stream loop: rendered pages batch up for `_compare_batch`;
    a page that cannot be compared is listed in `skipped` with the reason."""

    def __init__(self, engine: EncodingBackend, config: SweepConfig, skipped: list[SkippedPage], progress: ProgressSink | None) -> None:
        self.engine, self.config, self.skipped, self.progress = engine, config, skipped, progress
        self.records: list[dict[str, Any]] = []
        self.waiting: dict[int, set[int]] = {}  # document index -> pages announced but not yet seen

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def opened(self, event: DocOpened) -> None:
        self.waiting[event.index] = set(event.page_numbers)
        if self.progress is not None:
            self.progress.pages_known(len(event.page_numbers))

    def rendered(self, event: PageRendered) -> _Page | None:
        page = event.page
        self.waiting.get(event.index, set()).discard(page.page)
        if page.image is None:
            reason = str(page.error) if page.error is not None else "no image"
            self.skipped.append(SkippedPage(event.doc.display, page.page, f"render_error: {reason}"))
            if self.progress is not None:
                self.progress.pages_finished(1)
            return None
        return _Page(event.doc.display, page.page, page.image)

    def failed(self, event: DocFailed, queued: Sequence[_Page]) -> None:
        reason = f"{event.error.kind}: {event.error.detail}"
        missing: list[int | None] = list(sorted(self.waiting.pop(event.index, set())))
        for number in missing or [event.error.page]:
            self.skipped.append(SkippedPage(event.doc.display, number, reason))

    def run_batch(self, items: list[_Page]) -> None:
        self.records.extend(_compare_batch(self.engine, items, self.config, self.skipped))
        if self.progress is not None:
            self.progress.pages_finished(len(items))


def run_sweep(
    config: SweepConfig,
    *,
    progress: ProgressSink | None = None,
    engine_factory: Callable[[], EncodingBackend] | None = None,
) -> SweepReport:
    """Render, encode once, decode per setting, compare, write `sweep.json` and `sweep.png`.

    Raises `OcrpruneError`s for run-level problems (output not writable, model will not load);
    `report.exit_code` tells how the pages went.
    """
    from ocrprune.raster import PageStream

    check_writable(config.out)
    if config.raster.renderer != "mupdf":
        from ocrprune.raster import check_renderer

        check_renderer(config.raster.renderer)  # a missing extra fails before any work (exit 5)
    docs, problems = expand_inputs(list(config.inputs), glob=config.glob)
    skipped = [SkippedPage(p.path, p.page, f"{p.kind}: {p.detail}") for p in problems]
    if progress is not None:
        progress.start(len(docs) + len(problems))
    if not docs:  # nothing to compare: do not load a model for it
        report = build_report([], config.labels, config.threshold, skipped, _run_info(None, config))
        return _write(report, config.out)
    engine = engine_factory() if engine_factory is not None else _build_engine(config)
    pages = _SweepPages(engine, config, skipped, progress)
    try:
        drive(PageStream(docs, config.raster), pages)
    finally:
        if progress is not None:
            progress.close()
    report = build_report(
        pages.records, config.labels, config.threshold, skipped, _run_info(engine, config)
    )
    return _write(report, config.out)


def _write(report: SweepReport, out: Path) -> SweepReport:
    atomic_write(out / "sweep.json", report.to_json())
    atomic_write(out / "sweep.png", render_sweep_png(report))
    return replace(report, out=out)


def _build_engine(config: SweepConfig) -> EncodingBackend:
    """The configured engine through the shared factory (it has `encode`, `select` and `decode`)."""
    engine: EncodingBackend = open_backend(
        config.engine,
        config.model,
        config.generation,
        PruneConfig(keep=1.0, method=config.method, seed=config.seed),
    )
    return engine


def _run_info(engine: EncodingBackend | None, config: SweepConfig) -> dict[str, Any]:
    loaded = engine.loaded_info() if engine is not None else None
    return {
        "model": loaded.model if loaded else config.model.model,
        "revision": loaded.revision if loaded else config.model.revision,
        "dummy_model": loaded.dummy if loaded else config.model.is_tiny_random,
        "device": loaded.device if loaded else config.model.device,
        "dtype": loaded.dtype if loaded else config.model.dtype,
        "mode": config.generation.mode,
        "prompt": config.generation.prompt,
        "max_new_tokens": config.generation.max_new_tokens,
        "method": config.method,
        "batch_size": config.batch_size,
        "engine": config.engine,
        "positions": POSITIONS[config.engine],
        "ocrprune_version": __version__,
    }


def _compare_batch(
    engine: EncodingBackend, pages: list[_Page], config: SweepConfig, skipped: list[SkippedPage]
) -> list[dict[str, Any]]:
    """Encode once and decode the reference through the shared batch driver (a failing batch is
    split; a page that still fails is skipped), then decode every other setting from the same
    features. Failures become records."""
    records: list[dict[str, Any]] = []

    def reference(batch: list[_Page]) -> list[tuple[Any, int, PageOutput]]:
        encoded = engine.encode([p.image for p in batch])
        outputs = engine.decode(encoded, prune=PruneConfig(keep=1.0, method=config.method, seed=config.seed))
        return [(encoded, i, out) for i, out in enumerate(outputs)]

    done: list[tuple[_Page, Any, int, PageOutput]] = []

    def deliver(page: _Page, result: tuple[Any, int, PageOutput] | BatchFailure) -> None:
        if isinstance(result, BatchFailure):
            skipped.append(SkippedPage(page.source, page.page, f"model_error: {result.message}"))
        else:
            done.append((page, *result))

    run_split(pages, reference, deliver, engine.recover)
    # Pages whose reference ran, grouped by the encoder pass they share (in page order).
    groups: dict[int, tuple[Any, list[tuple[_Page, int, PageOutput]]]] = {}
    for page, encoded, index, ref in done:
        groups.setdefault(id(encoded), (encoded, []))[1].append((page, index, ref))
    for encoded, members in groups.values():
        group_records = [_record(p, "1", ref, ref) for p, _i, ref in members]
        for keep in config.keeps:
            label = keep_label(keep)
            if label == "1" or label in group_records[0]["settings"]:
                continue
            outputs = _decode_each(
                engine,
                encoded,
                [i for _p, i, _r in members],
                PruneConfig(keep=keep, method=config.method, seed=config.seed),
            )
            for record, (page, _i, ref), out in zip(group_records, members, outputs):
                if isinstance(out, BatchFailure):
                    log.warning("%s page %d: keep %s failed: %s", page.source, page.page, label, out.message)
                    record["settings"][label] = {
                        "status": "model_error",
                        "error": out.message,
                        "ned": 1.0,
                        "exact": False,
                    }
                else:
                    record["settings"][label] = _record(page, label, out, ref)["settings"][label]
        records.extend(group_records)
    order = {(p.source, p.page): n for n, p in enumerate(pages)}
    return sorted(records, key=lambda r: order[(r["source"], r["page"])])


def _decode_each(
    engine: EncodingBackend, encoded: Any, indices: list[int], prune: PruneConfig
) -> list[PageOutput | BatchFailure]:
    """Decode pages `indices` of an encoded batch through the shared driver: a failing batch is
    split and its pages decoded again from the same features."""
    results: dict[int, PageOutput | BatchFailure] = {}

    def run(batch: list[int]) -> list[PageOutput]:
        return engine.decode(engine.select(encoded, batch), prune=prune)

    def deliver(index: int, result: PageOutput | BatchFailure) -> None:
        results[index] = result

    run_split(indices, run, deliver, engine.recover)
    return [results[i] for i in indices]


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


__all__ = [
    "SCHEMA",
    "SettingRow",
    "SkippedPage",
    "SweepConfig",
    "SweepReport",
    "levenshtein",
    "normalized_edit_distance",
    "parse_keeps",
    "recommend",
    "render_sweep_png",
    "render_sweep_table",
    "run_sweep",
]
