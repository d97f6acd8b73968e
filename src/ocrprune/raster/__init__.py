"""Turn document pages into RGB PIL images, lazily, one page at a time.

Guarantees:

* A document is opened only when it is reached and closed before the next one, so thousands of
  inputs never hold thousands of handles. `PageStream` renders in a worker process (see
  `raster_stream`): a page that takes longer than `RasterConfig.render_timeout` is stopped and
  marked `render_error`, and the batch goes on; a renderer crash costs that page, not the run.
* Every failure names the file (and page) and has a short `kind`: `empty`, `corrupt`,
  `zero_pages`, `encrypted`, `no_pages_selected`, `too_large`, `missing`, `not_a_document`,
  `unreadable` for a document; `render_error` or `too_large` for one page, while the other pages
  still render; `internal` for an unexpected error in the stream's worker. MuPDF's own errors on
  opening are `corrupt`.
* Salvage: a PDF whose page tree holds fewer pages than its /Count claims renders the pages it
  has; the missing ones are `render_error` (see `raster_stream` for how a long run of them is cut
  short). A claim above `CLAIMED_PAGES_CAP` pages is not believed.
* MuPDF never prints (its errors went to stdout, into the progress bar and JSON logs): its
  messages are collected per page (`RenderedPage.warnings`) and while opening
  (`OpenedDocument.open_warnings`); `PageStream` logs them as warnings naming the file and page.
* Pixel cap: no page image exceeds `RasterConfig.max_pixels`. PDF pages that would are rendered at
  a lower dpi (recorded in `RenderedPage.dpi`); images are downscaled, aspect ratio kept.
* Renderers: MuPDF (default) or PDFium (`renderer="pdfium"`, optional, `raster_pdfium`); the same
  page has the same pixel size with either. Images always go through Pillow (`raster_images`).
* Inputs are opened through a checked descriptor (`raster_base.open_input`): names need not be
  UTF-8, and a file that became a FIFO or folder is refused without being read.
"""

from __future__ import annotations

from ocrprune.raster.base import (
    CLAIMED_PAGES_CAP,
    OpenedDocument,
    Pixels,
    RenderedPage,
    capped_scale,
    pixel_size,
    select_pages,
)
from ocrprune.raster.images import (
    IMAGE_FORMATS,
    MULTI_FRAME_FORMATS,
    WHITE,
    ImageDocument,
    load_image_page,
    to_rgb,
)
from ocrprune.raster.mupdf import mupdf_messages, pdf_page_pixmap, rasterize_pdf_page
from ocrprune.raster.open import check_renderer, open_document
from ocrprune.raster.pdfium import NEEDS_PDFIUM
from ocrprune.raster.stream import (
    DocDone,
    DocFailed,
    DocOpened,
    Opener,
    PageRendered,
    PageStream,
    StreamEvent,
)

__all__ = [
    "CLAIMED_PAGES_CAP",
    "IMAGE_FORMATS",
    "MULTI_FRAME_FORMATS",
    "NEEDS_PDFIUM",
    "WHITE",
    "DocDone",
    "DocFailed",
    "DocOpened",
    "ImageDocument",
    "OpenedDocument",
    "Opener",
    "PageRendered",
    "PageStream",
    "Pixels",
    "RenderedPage",
    "StreamEvent",
    "capped_scale",
    "check_renderer",
    "load_image_page",
    "mupdf_messages",
    "open_document",
    "pdf_page_pixmap",
    "pixel_size",
    "rasterize_pdf_page",
    "select_pages",
    "to_rgb",
]
