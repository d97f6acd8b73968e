"""Image inputs (PNG, JPEG, TIFF, WebP, GIF, BMP) as pages, with Pillow.

Every frame of a multi-frame file (TIFF, GIF, animated PNG and WebP) is a page; EXIF orientation
is applied; alpha is composited on white; 16-bit grey is scaled, not clipped (see `to_rgb`).
Pillow's decompression-bomb guard stays on: an image above its hard limit (about 179 Mpx) is
refused as `too_large` rather than decoded.
"""

from __future__ import annotations

import math
from typing import Any, BinaryIO, cast

from PIL import Image, ImageOps, UnidentifiedImageError

from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document
from ocrprune.raster.base import InputFile, OpenedDocument, capped_scale

IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP")  # what sniff_kind accepts
MULTI_FRAME_FORMATS = ("TIFF", "GIF", "PNG", "WEBP")  # PNG and WebP: animated ones (APNG)
WHITE = (255, 255, 255)
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageDocument(OpenedDocument):
    """An image file; each frame is a page. Owns the file object it was opened from."""

    def __init__(
        self,
        doc: Document,
        cfg: RasterConfig,
        image: Image.Image,
        frames: int,
        fh: BinaryIO | None = None,
    ) -> None:
        self._image: Image.Image | None = image
        self._fh = fh
        super().__init__(doc, cfg, frames)

    @classmethod
    def open(cls, doc: Document, cfg: RasterConfig, source: InputFile) -> ImageDocument:
        fh = source.reader()
        try:
            image = Image.open(fh, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            fh.close()
            raise InputError(doc.display, "too_large", str(exc)) from None
        except UnidentifiedImageError:
            fh.close()
            raise InputError(doc.display, "corrupt", "not a readable image") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            fh.close()
            raise InputError(doc.display, "corrupt", f"cannot read image: {exc}") from None
        try:
            frames = getattr(image, "n_frames", 1) if image.format in MULTI_FRAME_FORMATS else 1
            return cls(doc, cfg, image, max(1, int(frames)), fh)
        except InputError:
            image.close()
            fh.close()
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            image.close()
            fh.close()
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
        if self._fh is not None:
            self._fh.close()
            self._fh = None


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
        _, high = cast(tuple[float, float], image.getextrema())
        if high <= 1.0:
            return image.point(lambda v: v * 255.0).convert("L")
        wide = image
    else:
        wide = image.convert("I") if image.mode != "I" else image
        _, high = cast(tuple[float, float], wide.getextrema())
    shift = max(0, int(max(high, 0)).bit_length() - 8)
    factor = 1.0 / (1 << shift)
    return wide.point(lambda v: v * factor).convert("L")
