"""PDF pages with MuPDF (the default renderer): open, repair page counts, unlock, render.

See the package docstring (`ocrprune.raster`) for the guarantees every renderer keeps.
"""

from __future__ import annotations

import re

import pymupdf
from PIL import Image

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document
from ocrprune.names import escape_name
from ocrprune.raster.base import (
    InputFile,
    OpenedDocument,
    Pixels,
    capped_scale,
    describe,
)

_REF = re.compile(rb"(\d+)\s+\d+\s+R")
MAX_MESSAGES = 10  # MuPDF messages kept per page (a damaged page can say thousands of things)
_MESSAGE_CHARS = 300


# --- PDF with MuPDF -------------------------------------------------------------------------------


def rasterize_pdf_page(
    page: pymupdf.Page, dpi: float, max_pixels: int
) -> tuple[Image.Image, float]:
    """Render one PDF page (its /Rotate honoured) to RGB at `dpi`, lowered to fit `max_pixels`.

    Returns the image and the dpi actually used. The image is built from the raw samples."""
    pix, used = pdf_page_pixmap(page, dpi, max_pixels)
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples, "raw", "RGB", pix.stride)
    return image, used


def pdf_page_pixmap(
    page: pymupdf.Page, dpi: float, max_pixels: int
) -> tuple[pymupdf.Pixmap, float]:
    """MuPDF's RGB pixmap of one page at `dpi` (lowered to fit `max_pixels`), and the dpi used."""
    rect = page.rect
    if rect.width <= 0 or rect.height <= 0:
        raise ValueError(f"the page has an empty size ({rect.width:g} x {rect.height:g} pt)")
    scale = capped_scale(rect.width, rect.height, dpi / 72.0, max_pixels)
    pix = page.get_pixmap(
        matrix=pymupdf.Matrix(scale, scale), alpha=False, colorspace=pymupdf.csRGB
    )
    return pix, scale * 72.0


def quiet_mupdf() -> None:
    """Stop MuPDF printing its errors to stdout; they are collected for `mupdf_messages`."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)


def mupdf_messages() -> tuple[str, ...]:
    """MuPDF's errors and warnings since the last call (then forgotten): distinct, in order,
    each one line, at most `MAX_MESSAGES` (and a line saying how many more)."""
    text = pymupdf.TOOLS.mupdf_warnings(reset=True)  # also flushes "... repeated N times"
    lines = (escape_name(line.strip())[:_MESSAGE_CHARS] for line in text.splitlines())
    distinct = list(dict.fromkeys(line for line in lines if line))
    if len(distinct) > MAX_MESSAGES:
        more = len(distinct) - MAX_MESSAGES
        distinct[MAX_MESSAGES:] = [f"and {more} more MuPDF message(s)"]
    return tuple(distinct)


class MupdfDocument(OpenedDocument):
    def __init__(
        self, doc: Document, cfg: RasterConfig, pdf: pymupdf.Document, count: int, real: int
    ) -> None:
        self._pdf: pymupdf.Document | None = pdf
        self.readable_pages = real if real < count else None
        super().__init__(doc, cfg, count)

    @classmethod
    def open(cls, doc: Document, cfg: RasterConfig, source: InputFile) -> MupdfDocument:
        quiet_mupdf()
        mupdf_messages()  # not this document's
        pdf = _open_mupdf(doc, source)  # a failure's messages are dropped by the next open
        try:
            _unlock(pdf, doc, cfg)
            claimed, real = _page_counts(pdf, doc)
            if real == 0:
                if claimed > 0:
                    detail = f"the page tree claims {claimed} pages but holds none"
                    raise InputError(doc.display, "corrupt", detail)
                if pdf.is_repaired:
                    raise InputError(
                        doc.display, "corrupt", "damaged PDF: repaired by MuPDF but no pages found"
                    )
                raise InputError(doc.display, "zero_pages", "the PDF has no pages")
            opened = cls(doc, cfg, pdf, claimed, real)
            opened.open_warnings = mupdf_messages()
            return opened
        except BaseException as exc:
            if not pdf.is_closed:
                pdf.close()
            if isinstance(exc, (RuntimeError, pymupdf.mupdf.FzErrorBase)):  # MuPDF's own errors
                reason = _mupdf_reason(exc)
                raise InputError(doc.display, "corrupt", f"cannot read the PDF: {reason}") from None
            raise

    def probe(self, page_no: int) -> str | None:
        assert self._pdf is not None, "document is closed"
        try:
            self._pdf.load_page(page_no - 1)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the answer
            return describe(exc)
        finally:
            mupdf_messages()  # a probe's conclusion is all it reports
        return None

    def messages(self) -> tuple[str, ...]:
        return mupdf_messages()

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        assert self._pdf is not None, "document is closed"
        page = self._pdf.load_page(page_no - 1)
        return rasterize_pdf_page(page, float(self.cfg.dpi), self.cfg.max_pixels)

    def _pixels(self, page_no: int) -> Pixels:
        assert self._pdf is not None, "document is closed"
        page = self._pdf.load_page(page_no - 1)
        pix, dpi = pdf_page_pixmap(page, float(self.cfg.dpi), self.cfg.max_pixels)
        if pix.stride != pix.width * 3:  # rows padded: let Pillow repack them
            size = (pix.width, pix.height)
            image = Image.frombytes("RGB", size, pix.samples, "raw", "RGB", pix.stride)
            return Pixels(page_no, size, image.tobytes(), dpi)
        return Pixels(page_no, (pix.width, pix.height), pix.samples_mv, dpi, owner=pix)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None


def _open_mupdf(doc: Document, source: InputFile) -> pymupdf.Document:
    """Open through the checked descriptor: by its /proc name, else by name, else from memory."""
    name = source.proc_path()
    try:
        if name is not None:
            return pymupdf.open(name, filetype="pdf")
        try:
            str(doc.path).encode("utf-8")
        except UnicodeEncodeError:
            return pymupdf.open(stream=source.read_all(), filetype="pdf")
        return pymupdf.open(str(doc.path), filetype="pdf")
    except pymupdf.EmptyFileError:
        raise InputError(doc.display, "empty", "the file is empty (0 bytes)") from None
    except FileNotFoundError:
        raise InputError(doc.display, "missing", "the file no longer exists") from None
    except Exception as exc:  # FileDataError and any other MuPDF open failure
        raise InputError(
            doc.display, "corrupt", f"cannot open as PDF: {_mupdf_reason(exc)}"
        ) from None


def _mupdf_reason(exc: BaseException) -> str:
    """MuPDF's own words (`no objects found`), without the file name or error code."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    text = str(cause)
    return re.sub(r"^code=\d+:\s*", "", text) or type(cause).__name__


def _page_counts(pdf: pymupdf.Document, doc: Document) -> tuple[int, int]:
    """(pages claimed, pages really in the page tree).

    MuPDF refuses a /Count larger than the file could hold ("Invalid number of pages"); then the
    page tree is walked, each node's /Count corrected in memory, and the pages found are rendered
    while the claim still decides how many pages are announced."""
    try:
        count = pdf.page_count
        return count, count
    except RuntimeError:
        if not pdf.is_pdf:
            raise
    root = _ref(pdf.xref_get_key(pdf.pdf_catalog(), "Pages"))
    if root is None:
        raise InputError(doc.display, "corrupt", "the PDF has no page tree")
    kind, value = pdf.xref_get_key(root, "Count")
    claimed = int(value) if kind == "int" else 0
    real = _fix_counts(pdf, root, set(), 0)
    if pdf.page_count != real:
        raise InputError(doc.display, "corrupt", "the PDF's page tree cannot be read")
    return max(claimed, real), real


def _fix_counts(pdf: pymupdf.Document, xref: int, seen: set[int], depth: int) -> int:
    """Pages under page-tree node `xref`, setting each /Pages node's /Count to what it holds."""
    if xref in seen or depth > 64:
        return 0
    seen.add(xref)
    node_type = pdf.xref_get_key(xref, "Type")[1]
    kind, value = pdf.xref_get_key(xref, "Kids")
    if node_type == "/Page" or kind == "null":
        return 1
    if kind == "xref":  # the Kids array is an object of its own
        inner = _ref(("xref", value))
        value = pdf.xref_object(inner) if inner is not None else "[]"
    kids = [int(m) for m in _REF.findall(value.encode("latin-1", "replace"))]
    total = sum(_fix_counts(pdf, kid, seen, depth + 1) for kid in kids)
    pdf.xref_set_key(xref, "Count", str(total))
    return total


def _ref(key: tuple[str, str]) -> int | None:
    kind, value = key
    match = _REF.match(value.encode("latin-1", "replace")) if kind == "xref" else None
    return int(match.group(1)) if match else None


def _unlock(pdf: pymupdf.Document, doc: Document, cfg: RasterConfig) -> None:
    if not pdf.needs_pass:
        return
    if cfg.password is None:
        raise InputError(doc.display, "encrypted", cfg.password_problem(wrong=False))
    if not pdf.authenticate(cfg.password):
        raise InputError(doc.display, "encrypted", cfg.password_problem(wrong=True))
