"""Open a document with the renderer it needs: Pillow for images, MuPDF or PDFium for PDFs."""

from __future__ import annotations

from ocrprune.config import RasterConfig
from ocrprune.inputs import Document
from ocrprune.raster.base import OpenedDocument, open_input
from ocrprune.raster.images import ImageDocument
from ocrprune.raster.mupdf import MupdfDocument
from ocrprune.raster.pdfium import PdfiumDocument, import_pdfium


def check_renderer(name: str) -> None:
    """Raise `DependencyError` (exit 5; one line with the install command) if renderer `name`
    cannot run. The CLI calls it before the run, so a missing extra fails before any work."""
    if name == "pdfium":
        import_pdfium()
    elif name != "mupdf":
        raise ValueError(f"unknown renderer {name!r}; use mupdf or pdfium")


def open_document(doc: Document, cfg: RasterConfig) -> OpenedDocument:
    """Open `doc` for rendering; raises InputError (naming the file) if it cannot be used."""
    source = open_input(doc)
    try:
        if doc.kind == "image":
            return ImageDocument.open(doc, cfg, source)
        if cfg.renderer == "pdfium":
            return PdfiumDocument.open(doc, cfg, source)
        return MupdfDocument.open(doc, cfg, source)
    finally:
        source.close()  # a no-op where the document took the descriptor over
