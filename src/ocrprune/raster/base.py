"""What every renderer shares: the page result, page selection, pixel sizes, and safe opening.

Opening is where inputs that changed under a running batch are caught: a file deleted since it
was listed is `missing`; one replaced by a FIFO, socket, device or folder is `not_a_document`, and
is never opened for reading (a FIFO open would block forever). File names are bytes: files are
opened through a descriptor, so a name that is not valid UTF-8 opens like any other.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from PIL import Image

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document

# A page count above this is not believed: only the first CLAIMED_PAGES_CAP pages are announced
# (a damaged or hostile /Count can claim billions of pages).
CLAIMED_PAGES_CAP = 100_000
# `--pages N-` reaches the renderers as (N, OPEN_RANGE_END) (see `cli.parse_pages`).
OPEN_RANGE_END = 10**9
# MuPDF rounds a pixmap's edges inwards by this much before taking the ceiling (fz_round_rect).
_ROUND_EPSILON = 0.001


@dataclass(frozen=True)
class RenderedPage:
    """One page: `image` is RGB, or None with `error` set. `dpi` is the resolution used.

    `warnings`: the renderer's own messages while rendering this page (MuPDF's, e.g. a damaged
    stream it read past), distinct, in order; never printed by the renderer itself."""

    page: int
    image: Image.Image | None
    render_ms: float
    error: InputError | None = None
    dpi: float = 0.0
    warnings: tuple[str, ...] = ()


def select_pages(count: int, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """1-based page numbers chosen by inclusive `ranges`, clipped to 1..count, ascending, unique.

    No ranges means every page."""
    if not ranges:
        return list(range(1, count + 1))
    chosen: set[int] = set()
    for start, end in ranges:
        chosen.update(range(max(1, start), min(count, end) + 1))
    return sorted(chosen)


def pages_beyond(count: int, ranges: Sequence[tuple[int, int]]) -> int | None:
    """The highest page `ranges` ask for when it lies beyond a `count`-page document, else None.

    An open range (`7-`) asks for its first page only: `7-` on a 10-page document is no excess."""
    asked = [start if end >= OPEN_RANGE_END else end for start, end in ranges]
    highest = max(asked, default=0)
    return highest if highest > count else None


def capped_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """The largest scale <= `scale` at which a width x height page fits in `max_pixels` pixels."""
    if width <= 0 or height <= 0:
        return scale
    if math.ceil(width * scale) * math.ceil(height * scale) <= max_pixels:
        return scale
    fitted = math.sqrt(max_pixels / (width * height))
    while fitted > 0 and math.ceil(width * fitted) * math.ceil(height * fitted) > max_pixels:
        fitted *= 0.999
    return fitted


def pixel_size(width: float, height: float, scale: float) -> tuple[int, int]:
    """The pixel size MuPDF gives a width x height pt page (after /Rotate) at `scale`.

    Every renderer uses it, so the same page has the same size whichever renders it."""
    return (
        max(1, math.ceil(width * scale - _ROUND_EPSILON)),
        max(1, math.ceil(height * scale - _ROUND_EPSILON)),
    )


@dataclass
class Pixels:
    """A rendered page as packed RGB bytes (`data`, width * 3 bytes a row); `owner` keeps the
    memory `data` points into alive."""

    page: int
    size: tuple[int, int]
    data: Any
    dpi: float
    owner: Any = None
    render_ms: float = 0.0
    warnings: tuple[str, ...] = ()


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class OpenedDocument:
    """An open document: `page_numbers` (1-based, after `--pages`) and `render(page_no)`.

    `readable_pages`: when the document is known to hold fewer pages than it claims, how many it
    really holds (pages after it fail without being tried). `trailing_error`: a problem with the
    document as a whole, reported once its pages are delivered (e.g. a page count over the cap).
    `open_warnings`: the renderer's own messages while opening (see `RenderedPage.warnings`).
    """

    readable_pages: int | None = None
    trailing_error: InputError | None = None
    open_warnings: tuple[str, ...] = ()

    def __init__(self, doc: Document, cfg: RasterConfig, page_count: int) -> None:
        self.doc = doc
        self.cfg = cfg
        self.claimed_pages = page_count  # what the document says, before the cap
        if page_count > CLAIMED_PAGES_CAP:
            self.trailing_error = InputError(
                doc.display,
                "too_large",
                f"the document claims {page_count} pages; "
                f"only the first {CLAIMED_PAGES_CAP} were read",
            )
            page_count = CLAIMED_PAGES_CAP
        self.page_count = page_count
        self.page_numbers = select_pages(page_count, cfg.pages)
        if not self.page_numbers:
            self.close()
            raise InputError(
                doc.display,
                "no_pages_selected",
                f"--pages selects none of the document's {page_count} page(s)",
            )

    def render(self, page_no: int) -> RenderedPage:
        """Render one page; a failure becomes `RenderedPage.error` (kind `render_error`)."""
        self._check(page_no)
        self.messages()  # what came before this page is not this page's
        start = time.perf_counter()
        try:
            image, dpi = self._render(page_no)
        except Exception as exc:  # the per-page boundary: one bad page must not stop the others
            return self._failed(page_no, exc, start)
        return RenderedPage(page_no, image, ms_since(start), None, dpi, self.messages())

    def render_pixels(self, page_no: int) -> RenderedPage | Pixels:
        """Like `render`, but a success is the raw RGB pixels (for the render process to send)."""
        self._check(page_no)
        self.messages()
        start = time.perf_counter()
        try:
            pixels = self._pixels(page_no)
        except Exception as exc:  # the per-page boundary, as in `render`
            return self._failed(page_no, exc, start)
        pixels.render_ms = ms_since(start)
        pixels.warnings = self.messages()
        return pixels

    def messages(self) -> tuple[str, ...]:
        """The renderer's own messages since the last call, distinct, in order (MuPDF's; the
        other renderers have none to give)."""
        return ()

    def _check(self, page_no: int) -> None:
        if not 1 <= page_no <= self.page_count:
            raise ValueError(f"page {page_no} is outside 1..{self.page_count}")

    def _failed(self, page_no: int, exc: Exception, start: float) -> RenderedPage:
        kind = "too_large" if isinstance(exc, Image.DecompressionBombError) else "render_error"
        detail = str(exc) if kind == "too_large" else describe(exc)
        error = InputError(self.doc.display, kind, detail, page=page_no)
        # A message the error already quotes is said once, in the error.
        said = tuple(m for m in self.messages() if m.rsplit(": ", 1)[-1] not in error.detail)
        return RenderedPage(page_no, None, ms_since(start), error, warnings=said)

    def _pixels(self, page_no: int) -> Pixels:
        image, dpi = self._render(page_no)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return Pixels(page_no, rgb.size, rgb.tobytes(), dpi)

    def probe(self, page_no: int) -> str | None:
        """Why page `page_no` cannot even be loaded (cheaply, without rendering), or None."""
        return None

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; safe to call twice."""

    def __enter__(self) -> OpenedDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(exc: BaseException) -> str:
    """`Type: message`, the form page errors take."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class InputFile:
    """A regular file opened for reading after checking it is one; owns `fd` until `close`."""

    fd: int
    size: int

    def reader(self) -> BinaryIO:
        """A binary file object over the descriptor; it takes ownership (closing it closes fd)."""
        fd, self.fd = self.fd, -1
        return os.fdopen(fd, "rb")

    def proc_path(self) -> str | None:
        """A name any library can open that reaches this very file (Linux), else None."""
        path = f"/proc/self/fd/{self.fd}"
        return path if self.fd >= 0 and os.path.exists(path) else None

    def read_all(self) -> bytes:
        with self.reader() as fh:
            return fh.read()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_input(doc: Document) -> InputFile:
    """Open `doc.path` for reading, refusing anything that is not a non-empty regular file.

    Never blocks: the type is checked with `stat` before opening, the open is non-blocking, and
    the type is checked again on the descriptor (the path could have been swapped in between)."""
    try:
        mode = os.stat(doc.path).st_mode
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except OSError as exc:
        raise _unreadable(doc, exc) from None
    if not stat.S_ISREG(mode):
        raise InputError(doc.display, "not_a_document", "not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(doc.path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EISDIR, errno.ENODEV):
            raise InputError(doc.display, "not_a_document", "not a regular file") from None
        raise _unreadable(doc, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(doc.display, "not_a_document", "not a regular file")
        if info.st_size == 0:
            raise InputError(doc.display, "empty", "the file is empty (0 bytes)")
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        raise _unreadable(doc, exc) from None
    except BaseException:
        os.close(fd)
        raise
    return InputFile(fd, info.st_size)


def _unreadable(doc: Document, exc: OSError) -> InputError:
    return InputError(doc.display, "unreadable", exc.strerror or str(exc))
