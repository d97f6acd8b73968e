"""Turn document pages into RGB PIL images, lazily, one page at a time.

Guarantees:

* A document is opened only when it is reached and closed before the next one, so thousands of
  inputs never hold thousands of handles. `PageStream` does all opening and rendering in one
  background thread (PyMuPDF objects never cross threads) and hands pages over through a bounded
  queue, so memory does not grow with page count.
* Every failure names the file (and page) and has a short `kind`: `empty`, `corrupt`,
  `zero_pages`, `encrypted`, `no_pages_selected`, `too_large`, `missing`, `unreadable` for a
  document; `render_error` or `too_large` for one page, while the other pages still render;
  `internal` for an unexpected error in the stream's worker.
* Pixel cap: no page image exceeds `RasterConfig.max_pixels`. PDF pages that would are rendered at
  a lower dpi (recorded in `RenderedPage.dpi`); images are downscaled, aspect ratio kept (JPEGs
  decode at a reduced scale first). Pillow's decompression-bomb guard stays on: an image above its
  hard limit (about 179 Mpx) is refused as `too_large` rather than decoded.
* Images: every TIFF/GIF frame is a page; EXIF orientation is applied; alpha is composited on white;
  16-bit grey is scaled, not clipped (see `to_rgb`).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pymupdf
from PIL import Image, ImageOps, UnidentifiedImageError

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document

IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP")  # what sniff_kind accepts
MULTI_FRAME_FORMATS = ("TIFF", "GIF")
WHITE = (255, 255, 255)
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class RenderedPage:
    """One page: `image` is RGB, or None with `error` set. `dpi` is the resolution used."""

    page: int
    image: Image.Image | None
    render_ms: float
    error: InputError | None = None
    dpi: float = 0.0


def select_pages(count: int, ranges: Sequence[tuple[int, int]]) -> list[int]:
    """1-based page numbers chosen by inclusive `ranges`, clipped to 1..count, ascending, unique.

    No ranges means every page."""
    if not ranges:
        return list(range(1, count + 1))
    chosen = {p for start, end in ranges for p in range(max(1, start), min(count, end) + 1)}
    return sorted(chosen)


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


class OpenedDocument:
    """An open document: `page_numbers` (1-based, after `--pages`) and `render(page_no)`."""

    def __init__(self, doc: Document, cfg: RasterConfig, page_count: int) -> None:
        self.doc = doc
        self.cfg = cfg
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
        if not 1 <= page_no <= self.page_count:
            raise ValueError(f"page {page_no} is outside 1..{self.page_count}")
        start = time.perf_counter()
        try:
            image, dpi = self._render(page_no)
        except Image.DecompressionBombError as exc:
            error = InputError(self.doc.display, "too_large", str(exc), page=page_no)
            return RenderedPage(page_no, None, _ms_since(start), error)
        except Exception as exc:  # the per-page boundary: one bad page must not stop the others
            detail = f"{type(exc).__name__}: {exc}"
            error = InputError(self.doc.display, "render_error", detail, page=page_no)
            return RenderedPage(page_no, None, _ms_since(start), error)
        return RenderedPage(page_no, image, _ms_since(start), None, dpi)

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file; safe to call twice."""

    def __enter__(self) -> OpenedDocument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def open_document(doc: Document, cfg: RasterConfig) -> OpenedDocument:
    """Open `doc` for rendering; raises InputError (naming the file) if it cannot be used."""
    try:
        size = doc.path.stat().st_size
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except OSError as exc:
        raise InputError(doc.display, "unreadable", exc.strerror or str(exc)) from None
    if size == 0:
        raise InputError(doc.display, "empty", "the file is empty (0 bytes)")
    if doc.kind == "pdf":
        return _PdfDocument.open(doc, cfg)
    return _ImageDocument.open(doc, cfg)


# --- PDF ------------------------------------------------------------------------------------------


def rasterize_pdf_page(
    page: pymupdf.Page, dpi: float, max_pixels: int
) -> tuple[Image.Image, float]:
    """Render one PDF page (its /Rotate honoured) to RGB at `dpi`, lowered to fit `max_pixels`.

    Returns the image and the dpi actually used. The image is built from the raw samples."""
    rect = page.rect
    if rect.width <= 0 or rect.height <= 0:
        raise ValueError(f"the page has an empty size ({rect.width:g} x {rect.height:g} pt)")
    scale = capped_scale(rect.width, rect.height, dpi / 72.0, max_pixels)
    pix = page.get_pixmap(
        matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB
    )
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)
    return image, scale * 72.0


class _PdfDocument(OpenedDocument):
    def __init__(self, doc: Document, cfg: RasterConfig, pdf: pymupdf.Document) -> None:
        self._pdf: pymupdf.Document | None = pdf
        super().__init__(doc, cfg, pdf.page_count)

    @classmethod
    def open(cls, doc: Document, cfg: RasterConfig) -> _PdfDocument:
        try:
            pdf = pymupdf.open(str(doc.path), filetype="pdf")
        except pymupdf.EmptyFileError:
            raise InputError(doc.display, "empty", "the file is empty (0 bytes)") from None
        except FileNotFoundError:
            raise InputError(doc.display, "missing", "the file no longer exists") from None
        except RuntimeError as exc:  # FileDataError and other MuPDF open failures
            raise InputError(doc.display, "corrupt", f"cannot open as PDF: {exc}") from None
        try:
            _unlock(pdf, doc, cfg.password)
            if pdf.page_count == 0:
                if pdf.is_repaired:
                    raise InputError(
                        doc.display, "corrupt", "damaged PDF: repaired by MuPDF but no pages found"
                    )
                raise InputError(doc.display, "zero_pages", "the PDF has no pages")
            return cls(doc, cfg, pdf)
        except BaseException:
            if not pdf.is_closed:
                pdf.close()
            raise

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        assert self._pdf is not None, "document is closed"
        page = self._pdf.load_page(page_no - 1)
        return rasterize_pdf_page(page, float(self.cfg.dpi), self.cfg.max_pixels)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None


def _unlock(pdf: pymupdf.Document, doc: Document, password: str | None) -> None:
    if not pdf.needs_pass:
        return
    if password is None:
        raise InputError(doc.display, "encrypted", "needs a password; pass --password")
    if not pdf.authenticate(password):
        raise InputError(doc.display, "encrypted", "the password given with --password is wrong")


# --- Images ---------------------------------------------------------------------------------------


class _ImageDocument(OpenedDocument):
    def __init__(self, doc: Document, cfg: RasterConfig, image: Image.Image, frames: int) -> None:
        self._image: Image.Image | None = image
        super().__init__(doc, cfg, frames)

    @classmethod
    def open(cls, doc: Document, cfg: RasterConfig) -> _ImageDocument:
        try:
            image = Image.open(doc.path, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise InputError(doc.display, "too_large", str(exc)) from None
        except UnidentifiedImageError:
            raise InputError(doc.display, "corrupt", "not a readable image") from None
        except FileNotFoundError:
            raise InputError(doc.display, "missing", "the file no longer exists") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(doc.display, "corrupt", f"cannot read image: {exc}") from None
        try:
            frames = getattr(image, "n_frames", 1) if image.format in MULTI_FRAME_FORMATS else 1
            return cls(doc, cfg, image, max(1, int(frames)))
        except InputError:
            image.close()
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            image.close()
            raise InputError(doc.display, "corrupt", f"cannot read image frames: {exc}") from None

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        assert self._image is not None, "document is closed"
        image = self._image
        if self.page_count > 1:
            image.seek(page_no - 1)
        return load_image_page(image, self.cfg.max_pixels)

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None


def load_image_page(image: Image.Image, max_pixels: int) -> tuple[Image.Image, float]:
    """The current frame as an upright RGB image within `max_pixels`, and its dpi.

    The dpi is the file's own resolution (72 when absent or implausible) times any downscale."""
    source_dpi = _image_dpi(image)
    width, height = image.size
    scale = capped_scale(width, height, 1.0, max_pixels)
    if scale < 1.0 and image.format in ("JPEG", "MPO"):
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    image.load()
    upright = _exif_upright(image)
    rgb = to_rgb(upright)
    if rgb.width * rgb.height > max_pixels:
        fit = capped_scale(rgb.width, rgb.height, 1.0, max_pixels)
        size = (max(1, math.floor(rgb.width * fit)), max(1, math.floor(rgb.height * fit)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb, source_dpi * min(1.0, max(rgb.size) / max(width, height))


def _image_dpi(image: Image.Image) -> float:
    dpi: Any = image.info.get("dpi")
    try:
        value = float(dpi[0])
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return 72.0
    return value if 18.0 <= value <= 4800.0 else 72.0


def _exif_upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError):
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB the way a reader would see the page.

    * 16/32-bit grey (`I;16*`, `I`, `F`): shifted right by (bits - 8), where bits is the bit length
      of the brightest sample (at least 8). Full-range 16-bit becomes `>> 8`, 12-bit data in a
      16-bit container `>> 4`; tones keep their proportions and nothing clips to white. Float images
      whose maximum is at most 1.0 are treated as 0..1.
    * Alpha (RGBA, LA, PA, a transparency key): composited onto white, so transparent black ink
      comes out as black text on white.
    * CMYK, palette, 1-bit, YCbCr, LAB and others: Pillow's conversion to RGB.
    """
    mode = image.mode
    if mode in _WIDE_GREY:
        return _scale_wide_grey(image).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, WHITE)
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return image.convert("RGB")


def _scale_wide_grey(image: Image.Image) -> Image.Image:
    if image.mode == "F":
        low, high = image.getextrema()
        if high <= 1.0:
            return image.point(lambda v: v * 255.0).convert("L")
        wide = image
    else:
        wide = image.convert("I") if image.mode != "I" else image
        low, high = wide.getextrema()
    shift = max(0, int(max(high, 0)).bit_length() - 8)
    factor = 1.0 / (1 << shift)
    return wide.point(lambda v: v * factor).convert("L")


# --- The stream -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocOpened:
    """Document `index` opened; its pages will follow in this order."""

    index: int
    doc: Document
    page_numbers: tuple[int, ...]


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


class PageStream:
    """Render documents in one background thread and yield events in order.

    For each document: `DocFailed`, or `DocOpened`, one `PageRendered` per selected page (failed
    pages carry `page.error`), then `DocDone` (or `DocFailed` if the worker breaks mid-document).
    At most `max_pages_in_flight` events wait in the queue; `max_queued` records the most seen.
    Use as a context manager, or call `close()`, to stop the worker when stopping early.
    """

    def __init__(
        self,
        docs: Sequence[Document],
        cfg: RasterConfig,
        *,
        max_pages_in_flight: int = 16,
        opener: Opener = open_document,
    ) -> None:
        if max_pages_in_flight < 1:
            raise ValueError("max_pages_in_flight must be at least 1")
        self.docs = list(docs)
        self.cfg = cfg
        self.max_queued = 0
        self._opener = opener
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pages_in_flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="ocrprune-raster", daemon=True)

    @property
    def worker_alive(self) -> bool:
        return self._thread.is_alive()

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
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker, drop whatever is queued and wait for the thread to end."""
        self._stop.set()
        while self._thread.is_alive():
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
        finally:
            self._put(_END)

    def _one(self, index: int, doc: Document) -> bool:
        """Stream one document; False when the stream was closed."""
        try:
            with self._opener(doc, self.cfg) as opened:
                if not self._put(DocOpened(index, doc, tuple(opened.page_numbers))):
                    return False
                for page_no in opened.page_numbers:
                    if self._stop.is_set():
                        return False
                    if not self._put(PageRendered(index, doc, opened.render(page_no))):
                        return False
            return self._put(DocDone(index, doc))
        except InputError as exc:
            return self._put(DocFailed(index, doc, exc))
        except Exception as exc:  # never lose a worker failure: report it and go on
            error = InputError(doc.display, "internal", f"{type(exc).__name__}: {exc}")
            return self._put(DocFailed(index, doc, error))
