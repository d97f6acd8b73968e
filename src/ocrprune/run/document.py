"""One document in a run: its state while its pages are in flight, its input digest, the picklable
plan a distributed driver hands a worker, and its results: a `PageResult` per page (from the
rendered page and the engine's output, or a failure), one `DocResult`, and the error lines it logs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from ocrprune.errors import InputError, UnsafeOutputError
from ocrprune.inputs import Document
from ocrprune.postprocess.loops import ends_in_loop
from ocrprune.records import DocResult, KeepInfo, PageResult, Timings
from ocrprune.writers import files

if TYPE_CHECKING:
    from ocrprune.raster import RenderedPage
    from ocrprune.runtime.api import PageOutput

log = logging.getLogger("ocrprune")

STATUS_NOTES = {
    "length": "stopped at the token limit without end-of-sequence (text kept; raise --max-new-tokens)",
    "repetition": "stopped at the token limit in a loop (the output repeats itself)",
    "timeout": "generation stopped at --page-timeout",
}
LOG_RUN = 5  # consecutive identical page failures logged one by one; a longer run is one line


@dataclass
class DocState:
    """A document in flight: its pages arrive out of batch order and are sorted at the end."""

    index: int
    doc: Document
    shown: str  # the escaped display name used in every record and log line
    rel: PurePosixPath
    paths: files.DocPaths | None
    digest: str = ""
    key: dict[str, Any] = field(default_factory=dict)
    reuse: dict[int, PageResult] = field(default_factory=dict)  # checkpointed pages
    caps: dict[int, int] = field(default_factory=dict)  # the token cap each reused page ran with
    expected: list[int] = field(default_factory=list)
    results: dict[int, PageResult] = field(default_factory=dict)
    opened: bool = False
    rendered_all: bool = False
    error: InputError | None = None
    # A path of this document under --out that must not be written (a planted link): the
    # document is converted, then reported as an `unsafe_output` failure and not written.
    unsafe: UnsafeOutputError | None = None

    def complete(self) -> bool:
        if self.error is not None and not self.opened:
            return True
        # Results are only ever recorded for expected pages, so counting them is enough.
        return self.rendered_all and len(self.results) == len(self.expected)


def input_digest(doc: Document) -> str:
    """SHA-256 of an input, opened without blocking and only if it is still a regular file
    (an input replaced by a FIFO after listing would otherwise hang the run)."""
    try:
        fd = os.open(doc.path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except OSError as exc:
        raise InputError(doc.display, "unreadable", exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(doc.display, "not_a_document", "no longer a regular file")
        digest = hashlib.sha256()
        while block := os.read(fd, 1 << 20):
            digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        raise InputError(doc.display, "unreadable", exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PlannedDoc:
    """A document the driver of a distributed run planned: its input, its output name (collisions
    already resolved), its input digest and the resume key the driver checked. Picklable."""

    doc: Document
    rel: PurePosixPath
    digest: str
    key: dict[str, Any]


# ---- results ------------------------------------------------------------------------------------


def page_result(page: RenderedPage, output: PageOutput) -> PageResult:
    """A converted page: the engine's text post-processed (Markdown, boxes, figures), its status
    (a capped output that repeats itself is `repetition`) and its timings. A failure after the
    model costs this page only (`model_error`)."""
    from ocrprune.postprocess import postprocess_page

    timings = Timings(
        render=page.render_ms,
        preprocess=output.preprocess_ms,
        encode=output.encode_ms,
        prune=output.prune_ms,
        prefill=output.prefill_ms,
        decode=output.decode_ms,
        total=page.render_ms
        + output.preprocess_ms
        + output.encode_ms
        + output.prune_ms
        + output.prefill_ms
        + output.decode_ms,
    )
    width, height = page.image.size if page.image is not None else (0, 0)
    status = output.status
    if status == "length" and ends_in_loop(output.token_ids, output.raw_text):
        status = "repetition"  # capped, and the output repeats itself (see `loops.py`)
    note = output.error or STATUS_NOTES.get(status)
    try:
        markdown, boxes, figures = postprocess_page(output.raw_text, page.image, page.page)
    except Exception as exc:  # noqa: BLE001 - a failure after the model costs this page only
        log.debug("post-processing failed on page %d", page.page, exc_info=True)
        markdown, boxes, figures = "", (), ()
        status, note = "model_error", f"post-processing failed: {type(exc).__name__}: {exc}"
    return PageResult(
        page=page.page,
        status=status,  # type: ignore[arg-type]
        markdown=markdown,
        raw_text=output.raw_text,
        boxes=boxes,
        figures=figures,
        tokens=output.tokens,
        timings=timings,
        keep=output.keep,
        width=width,
        height=height,
        error=note,
    )


def failed_page(page: RenderedPage, status: str, message: str, keep: KeepInfo) -> PageResult:
    """A page without model output (`render_error`, `model_error`): its render time and why.
    `keep` is the run's setting with ratio 0 (nothing was kept)."""
    width, height = page.image.size if page.image is not None else (0, 0)
    return PageResult(
        page=page.page,
        status=status,  # type: ignore[arg-type]
        keep=keep,
        timings=Timings(render=page.render_ms, total=page.render_ms),
        width=width,
        height=height,
        error=message,
    )


def doc_result(state: DocState) -> DocResult:
    """A complete document as the run records it: its pages in page order."""
    return DocResult(
        source=state.shown,
        stem=state.rel.name,
        pages=tuple(state.results[p] for p in sorted(state.results)),
        error=state.error.detail if state.error is not None else None,
        error_kind=state.error.kind if state.error is not None else None,
        page_count=len(state.expected),
        reused=tuple(sorted(p for p in state.reuse if p in state.results)),
    )


def log_document(state: DocState, pages: tuple[PageResult, ...]) -> None:
    """The document's error (if any), then one error line per page that is not ok (so `-q` still
    names each), except that a run of more than `LOG_RUN` consecutive pages failing the same way
    is one line (`pages 4-100000: render_error: ...`): a PDF that lies about its page count costs
    one line, not 100,000."""
    if state.error is not None:
        log.error("%s", state.error, extra={"file": state.shown, "kind": state.error.kind})
    for first, last, status, error in failure_runs(pages):
        spans = [(first, last)] if last - first >= LOG_RUN else [(n, n) for n in range(first, last + 1)]
        for start, end in spans:
            log.error(
                "%s %s: %s%s",
                state.shown,
                f"page {start}" if start == end else f"pages {start}-{end}",
                status,
                f": {error}" if error else "",
                extra={"file": state.shown, "page": start, "kind": status},
            )


def failure_runs(pages: tuple[PageResult, ...]) -> Iterator[tuple[int, int, str, str | None]]:
    """(first, last, status, error) for each run of consecutive pages that are not ok and fail
    with the same status and error."""
    run: list[Any] | None = None
    for page in pages:
        if page.status == "ok":
            if run is not None:
                yield tuple(run)  # type: ignore[misc]
                run = None
            continue
        if run is not None and run[1] + 1 == page.page and (run[2], run[3]) == (page.status, page.error):
            run[1] = page.page
            continue
        if run is not None:
            yield tuple(run)  # type: ignore[misc]
        run = [page.page, page.page, page.status, page.error]
    if run is not None:
        yield tuple(run)  # type: ignore[misc]
