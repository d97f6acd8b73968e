"""Plain records shared between layers.

Only standard-library values live here (no torch, no PIL), so writers and reports can be built and
tested anywhere. Every page that goes in comes out as exactly one `PageResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
