"""`--renderer pdfium`: PDF pages through PDFium (pypdfium2, Apache-2.0/BSD), an optional extra.

A permissive alternative to MuPDF (AGPL-3.0). Pages come out at the same pixel size as MuPDF's
(`pixel_size` from the page box after /Rotate), under the same pixel cap, and failures get the
same kinds: `corrupt`, `encrypted`, `zero_pages`, `render_error`. MuPDF stays the default: it
repairs far more damaged files.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from ocrprune.config import RasterConfig
from ocrprune.errors import DependencyError, InputError
from ocrprune.inputs import Document
from ocrprune.raster.base import (
    InputFile,
    OpenedDocument,
    Pixels,
    capped_scale,
    describe,
    pixel_size,
)

NEEDS_PDFIUM = "--renderer pdfium needs pypdfium2: pip install 'ocrprune[pdfium]'"


def import_pdfium() -> Any:
    """The pypdfium2 module; DependencyError (exit 5) with the install command when it is absent."""
    try:
        import pypdfium2
        import pypdfium2.raw  # noqa: F401 - the C API, used to render at an exact size
    except ImportError:
        raise DependencyError(NEEDS_PDFIUM) from None
    return pypdfium2


class PdfiumDocument(OpenedDocument):
    """A PDF opened with PDFium; pages render at exactly MuPDF's pixel size for the same dpi."""

    def __init__(
        self, doc: Document, cfg: RasterConfig, pdf: Any, count: int, keep: tuple[Any, ...]
    ) -> None:
        self._pdf: Any = pdf
        self._keep = keep  # the file and the read callback PDFium calls; closed after the PDF
        super().__init__(doc, cfg, count)

    @classmethod
    def open(cls, doc: Document, cfg: RasterConfig, source: InputFile) -> PdfiumDocument:
        pdfium = import_pdfium()
        import pypdfium2.internal as internal
        import pypdfium2.raw as c

        fh = source.reader()
        try:
            reader, hold = internal.get_bufreader(fh)
            password = None if cfg.password is None else (cfg.password + "\x00").encode("utf-8")
            raw = c.FPDF_LoadCustomDocument(reader, password)
            if not raw:  # PDFium's last error is only meaningful right after a failed load
                raise _open_error(doc, cfg, c.FPDF_GetLastError())
            pdf = pdfium.PdfDocument(raw)
        except BaseException:
            fh.close()
            raise
        keep = (fh, reader, hold)
        try:
            count = len(pdf)
            if count < 1:
                raise InputError(doc.display, "zero_pages", "the PDF has no pages")
            return cls(doc, cfg, pdf, count, keep)
        except BaseException:
            pdf.close()
            fh.close()
            raise

    def probe(self, page_no: int) -> str | None:
        assert self._pdf is not None, "document is closed"
        try:
            self._pdf[page_no - 1].close()
        except Exception as exc:  # noqa: BLE001 - any failure to load is the answer
            return describe(exc)
        return None

    def _render(self, page_no: int) -> tuple[Image.Image, float]:
        assert self._pdf is not None, "document is closed"
        page = self._pdf[page_no - 1]
        try:
            return rasterize_pdfium_page(page, float(self.cfg.dpi), self.cfg.max_pixels)
        finally:
            page.close()

    def _pixels(self, page_no: int) -> Pixels:
        assert self._pdf is not None, "document is closed"
        page = self._pdf[page_no - 1]
        try:
            bitmap, dpi = _bitmap(page, float(self.cfg.dpi), self.cfg.max_pixels)
        finally:
            page.close()
        size = (bitmap.width, bitmap.height)
        return Pixels(page_no, size, memoryview(bitmap.buffer).cast("B"), dpi, owner=bitmap)

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
            self._pdf = None
            self._keep[0].close()


def rasterize_pdfium_page(page: Any, dpi: float, max_pixels: int) -> tuple[Image.Image, float]:
    """A pypdfium2 page (its /Rotate honoured) as RGB at `dpi`, lowered to fit `max_pixels`."""
    bitmap, used = _bitmap(page, dpi, max_pixels)
    try:
        size = (bitmap.width, bitmap.height)
        image = Image.frombytes("RGB", size, bytes(bitmap.buffer), "raw", "RGB", bitmap.stride)
    finally:
        bitmap.close()
    return image, used


def _bitmap(page: Any, dpi: float, max_pixels: int) -> tuple[Any, float]:
    """A packed RGB PdfBitmap of the page at exactly MuPDF's pixel size, and the dpi used."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as c

    width, height = page.get_width(), page.get_height()  # after /Rotate, like MuPDF's page.rect
    if width <= 0 or height <= 0:
        raise ValueError(f"the page has an empty size ({width:g} x {height:g} pt)")
    scale = capped_scale(width, height, dpi / 72.0, max_pixels)
    size_x, size_y = pixel_size(width, height, scale)
    bitmap = pdfium.PdfBitmap.new_native(size_x, size_y, c.FPDFBitmap_BGR, rev_byteorder=True)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, size_x, size_y)
    flags = c.FPDF_ANNOT | c.FPDF_REVERSE_BYTE_ORDER
    c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, size_x, size_y, 0, flags)
    return bitmap, scale * 72.0


def _open_error(doc: Document, cfg: RasterConfig, code: int) -> InputError:
    import pypdfium2.raw as c

    if code == c.FPDF_ERR_PASSWORD:
        if cfg.password is None:
            return InputError(doc.display, "encrypted", cfg.password_problem(wrong=False))
        return InputError(doc.display, "encrypted", cfg.password_problem(wrong=True))
    if code == c.FPDF_ERR_SECURITY:
        return InputError(doc.display, "encrypted", "unsupported security handler")
    reason = {
        c.FPDF_ERR_FORMAT: "not a PDF or damaged beyond repair",
        c.FPDF_ERR_FILE: "the file cannot be read",
    }.get(code, f"PDFium error {code}")
    return InputError(doc.display, "corrupt", f"cannot open as PDF: {reason}")
