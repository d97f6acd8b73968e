"""Plain records shared between layers.

Only standard-library values live here (no torch, no PIL), so writers and reports can be built and
tested anywhere. Every page that goes in comes out as exactly one `PageResult`.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Literal

# `length`: stopped at the token or position cap without end-of-sequence (text kept);
# `repetition`: stopped without end-of-sequence and a loop is detected in the output (`loops.py`).
PageStatus = Literal["ok", "length", "repetition", "timeout", "render_error", "model_error"]
PAGE_STATUSES: tuple[str, ...] = ("ok", "length", "repetition", "timeout", "render_error", "model_error")


@dataclass(frozen=True)
class Box:
    """A grounding span from the model: a label and boxes in 0-999 coordinates of the page."""

    label: str
    boxes: tuple[tuple[int, int, int, int], ...]
    text: str = ""


@dataclass(frozen=True)
class Figure:
    """An `image` region cropped from the page, encoded as JPEG bytes; `name` is its file name."""

    name: str
    box: tuple[int, int, int, int]
    jpeg: bytes = field(repr=False)


@dataclass(frozen=True)
class TokenCounts:
    """Token counts for one page.

    `visual_total`/`visual_kept` count the prunable visual tokens only (N and K of the RTPrune
    spec). Newline and separator tokens are counted apart in `layout_total`/`layout_kept`;
    `newlines_collapsed` is how many newline tokens of fully pruned rows were dropped.
    """

    visual_total: int = 0
    visual_kept: int = 0
    layout_total: int = 0
    layout_kept: int = 0
    newlines_collapsed: int = 0
    prompt_unpruned: int = 0
    prompt: int = 0
    generated: int = 0


@dataclass(frozen=True)
class KeepInfo:
    """The keep setting asked for and the ratio actually used for this page."""

    setting: str = "1"
    ratio: float = 1.0
    method: str = "rtprune"
    r_txt: float | None = None
    r_sim: float | None = None


@dataclass(frozen=True)
class Timings:
    """Per-stage milliseconds for one page (stages shared by a batch are split evenly)."""

    render: float = 0.0
    preprocess: float = 0.0
    encode: float = 0.0
    prune: float = 0.0
    prefill: float = 0.0
    decode: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class PageResult:
    """The outcome of one page: always present, whatever happened."""

    page: int
    status: PageStatus
    markdown: str = ""
    raw_text: str = ""
    boxes: tuple[Box, ...] = ()
    figures: tuple[Figure, ...] = ()
    tokens: TokenCounts = TokenCounts()
    timings: Timings = Timings()
    keep: KeepInfo = KeepInfo()
    width: int = 0
    height: int = 0
    error: str | None = None


@dataclass(frozen=True)
class DocResult:
    """One input document and its pages, in page order.

    `error` is set when the document could not be opened at all (then `pages` may be empty and
    `error_kind` says why, e.g. `encrypted`, `corrupt`, `empty`, `not_a_document`, `zero_pages`).
    """

    source: str
    stem: str
    pages: tuple[PageResult, ...] = ()
    error: str | None = None
    error_kind: str | None = None
    page_count: int = 0
    # True when the document was converted by an earlier run and skipped by this one; its pages
    # then carry the statuses and figures recorded in its manifest (no text).
    skipped: bool = False
    # Pages taken from an earlier run's checkpoints rather than converted by this run (resume,
    # --retry-failed): reported with the document, not counted as this run's work.
    reused: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.pages) and all(p.status == "ok" for p in self.pages)


@dataclass(frozen=True)
class RunInfo:
    """What produced the output: written into every JSON document and the run report."""

    model: str
    revision: str | None
    mode: str
    keep: str
    prune_method: str
    prompt: str
    device: str
    dtype: str
    dummy_model: bool = False
    version: str = ""
    engine: str = "hf"  # hf | vllm: what decoded the pages
    positions: str = "gapped"  # gapped (original position ids of kept tokens) | compact (0..n-1)

    def describe(self) -> dict[str, object]:
        """The fields every JSON output repeats, in a fixed order (version apart)."""
        return {
            "model": self.model,
            "revision": self.revision,
            "mode": self.mode,
            "keep": self.keep,
            "prune_method": self.prune_method,
            "prompt": self.prompt,
            "device": self.device,
            "dtype": self.dtype,
            "dummy_model": self.dummy_model,
            "engine": self.engine,
            "positions": self.positions,
        }


@dataclass(frozen=True)
class RunSummary:
    """Counts for a whole run; the exit code follows from these."""

    documents: int = 0
    documents_ok: int = 0
    documents_failed: int = 0
    documents_skipped: int = 0
    pages: int = 0
    pages_by_status: tuple[tuple[str, int], ...] = ()
    failures_by_kind: tuple[tuple[str, int], ...] = ()
    wall_seconds: float = 0.0
    interrupted: bool = False
    # The signal that stopped the run (2 SIGINT, 15 SIGTERM, 1 SIGHUP); exit code 128 + signal.
    signal: int = 0
    pages_processed: int = 0  # pages converted by this run (skipped documents' and reused pages excluded)
    documents_skipped_not_ok: int = 0  # skipped documents whose recorded pages are not all ok
    # Inputs this run never finished (--fail-fast stopped it, or a signal): shown names.
    not_reached: tuple[str, ...] = ()


# ---- plain-dict codec: page checkpoints and manifests store pages as JSON --------------------------


def page_to_record(page: PageResult, *, full: bool = True) -> dict[str, object]:
    """A JSON-ready dict of `page`. `full=False` leaves out the text, boxes and figures (what a
    manifest keeps for the run report); `full=True` keeps everything, figures as base64 JPEG, so
    `page_from_record` rebuilds an identical `PageResult` (a resumed page is byte-identical)."""
    record: dict[str, object] = {
        "page": page.page,
        "status": page.status,
        "error": page.error,
        "tokens": asdict(page.tokens),
        "timings": asdict(page.timings),
        "keep": asdict(page.keep),
        "width": page.width,
        "height": page.height,
    }
    if full:
        record["markdown"] = page.markdown
        record["raw_text"] = page.raw_text
        record["boxes"] = [{"label": b.label, "boxes": [list(c) for c in b.boxes], "text": b.text} for b in page.boxes]
        record["figures"] = [
            {"name": f.name, "box": list(f.box), "jpeg": base64.b64encode(f.jpeg).decode("ascii")}
            for f in page.figures
        ]
    return record


def page_from_record(record: dict) -> PageResult:
    """The inverse of `page_to_record`; raises KeyError/TypeError/ValueError on a malformed dict."""
    status = record["status"]
    if status not in PAGE_STATUSES:
        raise ValueError(f"unknown page status {status!r}")
    boxes = tuple(
        Box(str(b["label"]), tuple(tuple(int(v) for v in c) for c in b["boxes"]), str(b.get("text", "")))  # type: ignore[misc]
        for b in record.get("boxes", ())
    )
    figures = tuple(
        Figure(str(f["name"]), tuple(int(v) for v in f["box"]), base64.b64decode(f["jpeg"]))  # type: ignore[arg-type]
        for f in record.get("figures", ())
    )
    return PageResult(
        page=int(record["page"]),
        status=status,
        markdown=str(record.get("markdown", "")),
        raw_text=str(record.get("raw_text", "")),
        boxes=boxes,
        figures=figures,
        tokens=TokenCounts(**record["tokens"]),
        timings=Timings(**record["timings"]),
        keep=KeepInfo(**record["keep"]),
        width=int(record["width"]),
        height=int(record["height"]),
        error=record.get("error"),
    )
