"""`PageStream`: documents become ordered events, rendered ahead of the consumer, memory bounded.

Events, per document in input order: `DocFailed`, or `DocOpened`, one `PageRendered` per selected
page (failed pages carry `page.error`), then `DocDone`, or `DocFailed` when the rest of the
document cannot be delivered (the consumer marks its remaining pages with that error).

* One background thread drives the rendering and hands events over through a bounded queue.
* Rendering happens in a worker process (`raster_worker`) unless a custom opener is given: a page
  over `RasterConfig.render_timeout` becomes `render_error` ("exceeded the render time limit of
  N s") and the next page renders in a fresh process; a crash costs only that page.
* `close()` (also on Ctrl-C or any exception in the consumer) kills the worker process at once
  and never waits for a render to finish.
* Salvage: pages beyond what a PDF's page tree really holds fail without being tried (DocFailed
  after the readable pages). More generally, after `SALVAGE_AFTER` consecutive pages fail with the
  same error (numbers ignored), up to `PROBES` later pages are loaded without rendering; if every
  one fails the same way, the rest of the document is one DocFailed instead of thousands of slow
  identical failures (a PDF claiming 100000 pages with 3 real ones takes well under a second).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document
from ocrprune.names import escape_name
from ocrprune.raster.base import (
    CLAIMED_PAGES_CAP,
    OpenedDocument,
    RenderedPage,
    describe,
    pages_beyond,
)
from ocrprune.raster.worker import (
    RenderWorker,
    WorkerDied,
    WorkerStopped,
    WorkerTimeout,
    WorkerUnavailable,
    page_from_reply,
    refuse_inside_worker,
)

log = logging.getLogger("ocrprune")

SALVAGE_AFTER = 3
PROBES = 8
_CLOSE_WAIT = 2.0  # seconds close() waits for the thread once the worker is killed


@dataclass(frozen=True)
class DocOpened:
    """Document `index` opened; its pages will follow in this order.

    `page_count`: the pages the document says it has (0 when unknown); `warnings`: the
    renderer's own messages while opening it."""

    index: int
    doc: Document
    page_numbers: tuple[int, ...]
    page_count: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DocFailed:
    """Document `index` could not be used (or broke mid-way); no DocDone follows."""

    index: int
    doc: Document
    error: InputError


@dataclass(frozen=True)
class PageRendered:
    index: int
    doc: Document
    page: RenderedPage


@dataclass(frozen=True)
class DocDone:
    """Every selected page of document `index` has been delivered."""

    index: int
    doc: Document


StreamEvent = DocOpened | DocFailed | PageRendered | DocDone
Opener = Callable[[Document, RasterConfig], OpenedDocument]
_END = object()


@dataclass(frozen=True)
class _Opened:
    page_numbers: tuple[int, ...]
    claimed_pages: int
    readable_pages: int | None
    trailing_error: InputError | None
    warnings: tuple[str, ...] = ()


class _Session(Protocol):
    """Where documents are opened and rendered: this thread, or a worker process."""

    def open(self, doc: Document) -> _Opened: ...
    def render(self, page_no: int) -> RenderedPage: ...
    def probe(self, page_no: int) -> str | None: ...
    def close_doc(self) -> None: ...
    def interrupt(self) -> None: ...
    def shutdown(self) -> None: ...


class _ThreadSession:
    """Open and render in the stream's own thread (custom openers; no time limit)."""

    def __init__(self, opener: Opener, cfg: RasterConfig) -> None:
        self._opener, self._cfg = opener, cfg
        self._doc: OpenedDocument | None = None

    def open(self, doc: Document) -> _Opened:
        self.close_doc()
        self._doc = opened = self._opener(doc, self._cfg)
        return _Opened(
            tuple(opened.page_numbers),
            opened.claimed_pages,
            opened.readable_pages,
            opened.trailing_error,
            tuple(opened.open_warnings),
        )

    def render(self, page_no: int) -> RenderedPage:
        assert self._doc is not None
        return self._doc.render(page_no)

    def probe(self, page_no: int) -> str | None:
        assert self._doc is not None
        return self._doc.probe(page_no)

    def close_doc(self) -> None:
        if self._doc is not None:
            self._doc.close()
            self._doc = None

    def interrupt(self) -> None:
        """Nothing to kill: a render in this thread finishes on its own."""

    def shutdown(self) -> None:
        self.close_doc()


class _ProcessSession:
    """Open and render in a worker process, each request under `cfg.render_timeout`.

    A page is asked for only in a process that has the document open: when the process is not
    the one that opened it (it was killed after a timeout, crashed, or died while idle), the
    document is reopened first, so a dead process costs at most the page it was rendering."""

    def __init__(self, cfg: RasterConfig, stop: threading.Event) -> None:
        self._cfg = cfg
        self._timeout = cfg.render_timeout
        self.worker = RenderWorker(stop)
        self._doc: Document | None = None
        self._opened_in = -1  # the `worker.starts` of the process that opened `_doc`

    def open(self, doc: Document) -> _Opened:
        self._doc, self._opened_in = doc, -1
        start = time.monotonic()
        try:
            reply = self.worker.call(("open", doc, self._cfg), self._timeout)
        except WorkerTimeout:
            raise InputError(
                doc.display, "render_error", f"opening {self._limit_text(start)}"
            ) from None
        except WorkerDied as exc:
            raise InputError(
                doc.display, "corrupt", f"the renderer crashed opening it: {exc}"
            ) from None
        if reply[0] == "failed":
            raise InputError(doc.display, reply[1], reply[2])
        self._opened_in = self.worker.starts
        _, numbers, count, readable, trailing, said = reply
        error = InputError(doc.display, *trailing) if trailing is not None else None
        return _Opened(numbers, count, readable, error, said)

    def _ready(self) -> Document:
        """The current document, open in a running render process (reopened in a fresh one
        if need be; an InputError here ends the document: DocFailed)."""
        doc = self._doc
        assert doc is not None
        if self.worker.ready() != self._opened_in:
            self.open(doc)
        return doc

    def render(self, page_no: int) -> RenderedPage:
        doc = self._ready()
        start = time.monotonic()
        try:
            reply = self.worker.call(("render", page_no), self._timeout)
            return page_from_reply(reply, self.worker, doc.display)
        except WorkerTimeout:
            detail = self._limit_text(start)
        except WorkerDied as exc:
            detail = f"{exc} while rendering this page"
        error = InputError(doc.display, "render_error", detail, page=page_no)
        return RenderedPage(page_no, None, (time.monotonic() - start) * 1000.0, error)

    def probe(self, page_no: int) -> str | None:
        self._ready()
        try:
            reply = self.worker.call(("probe", page_no), self._timeout)
        except WorkerTimeout:
            return None  # slow is not unreadable: no conclusion
        except WorkerDied as exc:
            return str(exc)
        probed: str | None = reply[1]
        return probed

    def close_doc(self) -> None:
        self._doc = None

    def interrupt(self) -> None:
        self.worker.kill()

    def shutdown(self) -> None:
        self.worker.shutdown()

    def _limit_text(self, start: float) -> str:
        took = time.monotonic() - start
        return f"exceeded the render time limit of {self._timeout:g} s (stopped after {took:.1f} s)"


def log_warnings(event: StreamEvent, cfg: RasterConfig) -> None:
    """Log what is worth a warning about a document or page, as the consumer reaches it (in its
    thread, after what came before): the renderer's messages, `--pages` past the end."""
    if isinstance(event, DocOpened):
        shown = escape_name(event.doc.display)
        extra = {"file": shown, "kind": "mupdf"}
        for message in event.warnings:
            log.warning("%s: MuPDF: %s", shown, message, extra=extra)
        count = event.page_count
        beyond = pages_beyond(count, cfg.pages) if 0 < count <= CLAIMED_PAGES_CAP else None
        if beyond is not None:
            log.warning(
                "%s: --pages asks for pages up to %d; the document has %d",
                shown,
                beyond,
                count,
                extra={"file": shown, "kind": "pages_beyond_end"},
            )
    elif isinstance(event, PageRendered) and event.page.warnings:
        shown = escape_name(event.doc.display)
        page = event.page.page
        for message in event.page.warnings:
            log.warning(
                "%s page %d: MuPDF: %s",
                shown,
                page,
                message,
                extra={"file": shown, "page": page, "kind": "mupdf"},
            )


def _same_error(detail: str) -> str:
    return re.sub(r"\d+", "#", detail)


class _FailureRun:
    """Consecutive `render_error` pages with the same error; says when to check the rest."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.detail = ""
        self.length = 0
        self._check_at = SALVAGE_AFTER

    def add(self, page: RenderedPage) -> bool:
        error = page.error
        if error is None or error.kind != "render_error":
            self.key, self.length, self._check_at = None, 0, SALVAGE_AFTER
            return False
        key = _same_error(error.detail)
        if key != self.key:
            self.key, self.detail, self.length, self._check_at = key, error.detail, 0, SALVAGE_AFTER
        self.length += 1
        if self.length < self._check_at:
            return False
        self._check_at *= 2  # a failed check is not repeated on every page
        return True


class PageStream:
    """Render documents in a background thread (and a worker process) and yield events in order.

    At most `max_pages_in_flight` events wait in the queue; `max_queued` records the most seen.
    `opener`: open documents with this callable in the stream's thread instead of the worker
    process (no time limit; for tests and measurements). Use as a context manager, or call
    `close()`, to stop the worker when stopping early.
    """

    def __init__(
        self,
        docs: Sequence[Document],
        cfg: RasterConfig,
        *,
        max_pages_in_flight: int = 16,
        opener: Opener | None = None,
    ) -> None:
        if max_pages_in_flight < 1:
            raise ValueError("max_pages_in_flight must be at least 1")
        refuse_inside_worker()
        self.docs = list(docs)
        self.cfg = cfg
        self.max_queued = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pages_in_flight)
        self._stop = threading.Event()
        self._session: _Session = (
            _ThreadSession(opener, cfg) if opener is not None else _ProcessSession(cfg, self._stop)
        )
        self._thread = threading.Thread(target=self._work, name="ocrprune-raster", daemon=True)

    @property
    def worker_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def render_pid(self) -> int | None:
        """The render process's id while one runs (None when rendering in-thread)."""
        session = self._session
        return session.worker.pid if isinstance(session, _ProcessSession) else None

    def start(self) -> None:
        if self._thread.ident is None and not self._stop.is_set():
            self._thread.start()

    def __iter__(self) -> Iterator[StreamEvent]:
        self.start()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        return
                    continue
                if item is _END:
                    return
                log_warnings(item, self.cfg)  # type: ignore[arg-type]
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop: kill any render in progress, drop what is queued, let the thread end.

        Waits at most about two seconds for the thread (in-thread rendering cannot be cut short;
        that thread is a daemon and ends with the page it is on)."""
        self._stop.set()
        self._session.interrupt()
        deadline = time.monotonic() + _CLOSE_WAIT
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._drain()
            self._thread.join(0.05)
        self._drain()

    def __enter__(self) -> PageStream:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _put(self, item: object) -> bool:
        """Block until there is room; False if the stream was closed meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
            except queue.Full:
                continue
            self.max_queued = max(self.max_queued, self._queue.qsize())
            return True
        return False

    def _work(self) -> None:
        try:
            for index, doc in enumerate(self.docs):
                if self._stop.is_set() or not self._one(index, doc):
                    return
        except WorkerStopped:
            return
        finally:
            self._session.shutdown()
            self._put(_END)

    def _one(self, index: int, doc: Document) -> bool:
        """Stream one document; False when the stream was closed."""
        try:
            opened = self._open(doc)
        except InputError as exc:
            return self._put(DocFailed(index, doc, exc))
        except WorkerStopped:
            raise
        except Exception as exc:  # never lose a worker failure: report it and go on
            return self._put(
                DocFailed(index, doc, InputError(doc.display, "internal", describe(exc)))
            )
        try:
            event = DocOpened(
                index, doc, opened.page_numbers, opened.claimed_pages, opened.warnings
            )
            if not self._put(event):
                return False
            return self._pages(index, doc, opened)
        except InputError as exc:
            return self._put(DocFailed(index, doc, exc))
        except WorkerStopped:
            raise
        except Exception as exc:  # noqa: BLE001
            return self._put(
                DocFailed(index, doc, InputError(doc.display, "internal", describe(exc)))
            )
        finally:
            self._session.close_doc()

    def _open(self, doc: Document) -> _Opened:
        try:
            return self._session.open(doc)
        except WorkerUnavailable as exc:
            log.warning("%s; rendering in this process, without a render time limit", exc)
            from ocrprune.raster.open import open_document

            self._session.shutdown()
            self._session = _ThreadSession(open_document, self.cfg)
            return self._session.open(doc)

    def _pages(self, index: int, doc: Document, opened: _Opened) -> bool:
        numbers = opened.page_numbers
        run = _FailureRun()
        for position, page_no in enumerate(numbers):
            if self._stop.is_set():
                return False
            rest = numbers[position:]
            if opened.readable_pages is not None and page_no > opened.readable_pages:
                detail = (
                    f"pages {rest[0]}-{rest[-1]} are not in the PDF's page tree "
                    f"(it claims {opened.claimed_pages} pages and holds {opened.readable_pages})"
                )
                return self._put(
                    DocFailed(index, doc, InputError(doc.display, "render_error", detail))
                )
            page = self._session.render(page_no)
            if not self._put(PageRendered(index, doc, page)):
                return False
            rest = numbers[position + 1 :]
            if run.add(page) and rest and self._unreadable(rest, run.key):
                detail = (
                    f"pages {rest[0]}-{rest[-1]} were not rendered: they cannot be loaded, like "
                    f"the {run.length} pages before them ({run.detail})"
                )
                return self._put(
                    DocFailed(index, doc, InputError(doc.display, "render_error", detail))
                )
        if opened.trailing_error is not None:
            return self._put(DocFailed(index, doc, opened.trailing_error))
        return self._put(DocDone(index, doc))

    def _unreadable(self, rest: Sequence[int], key: str | None) -> bool:
        """Whether sampled pages of `rest` (first, last and spread between) all fail like `key`."""
        picks = {rest[0], rest[-1]} | {rest[i * len(rest) // PROBES] for i in range(PROBES)}
        for page_no in sorted(picks):
            detail = self._session.probe(page_no)
            if detail is None or _same_error(detail) != key:
                return False
        return True
