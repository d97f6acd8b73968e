"""Build test documents in code, with contents whose expected rendering is exact."""

from __future__ import annotations

import io
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw

A4 = (595.0, 842.0)


def make_pdf(
    path: Path,
    pages: int = 1,
    *,
    text: str | None = "page {n}",
    size: tuple[float, float] = A4,
    rotate: int = 0,
) -> Path:
    """A PDF with `pages` pages of `size` points; `text` (with `{n}` = page number) on each."""
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=size[0], height=size[1])
        if text:
            page.insert_text((20, 40), text.format(n=n), fontsize=12)
        if rotate:
            page.set_rotation(rotate)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(str(path))
    doc.close()
    return path


def make_encrypted_pdf(path: Path, password: str, pages: int = 2) -> Path:
    """A PDF that needs `password` to open (AES-256)."""
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        doc.new_page(width=200, height=300).insert_text((20, 40), f"secret {n}")
    doc.save(
        str(path),
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        user_pw=password,
        owner_pw=password + "-owner",
    )
    doc.close()
    return path


def build_pdf(objects: list[bytes]) -> bytes:
    """A PDF of `objects` (object 1 is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def make_zero_page_pdf(path: Path) -> Path:
    """A valid PDF whose page tree is empty (`/Count 0`), written by hand with a correct xref."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    path.write_bytes(build_pdf(objects))
    return path


def make_garbage_pdf(path: Path) -> Path:
    """A PDF header followed by junk: MuPDF either refuses it or 'repairs' it into 0 pages."""
    path.write_bytes(b"%PDF-1.7\n" + b"this is not a pdf body\n" * 40)
    return path


def make_png(
    path: Path, size: tuple[int, int] = (40, 30), color: tuple[int, ...] = (200, 10, 10)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 0, 255)).save(buf, format="PNG")
    return buf.getvalue()


def make_multiframe_tiff(path: Path, frames: int = 3, size: tuple[int, int] = (30, 20)) -> Path:
    """A TIFF with `frames` frames; frame i is filled with grey level 60 * (i + 1)."""
    images = [Image.new("L", size, 60 * (i + 1)) for i in range(frames)]
    images[0].save(path, format="TIFF", save_all=True, append_images=images[1:])
    return path


def make_16bit_tiff(path: Path, size: tuple[int, int] = (64, 8)) -> Path:
    """A 16-bit grey (`I;16`) TIFF: a horizontal ramp from 0 to 65535 (mid column about 32768)."""
    width, height = size
    row = [round(x * 65535 / (width - 1)) for x in range(width)]
    data = b"".join(v.to_bytes(2, "little") for v in row) * height
    Image.frombytes("I;16", size, data).save(path, format="TIFF")
    return path


def make_rgba_ink_png(path: Path, size: tuple[int, int] = (60, 40)) -> Path:
    """Black ink whose only signal is alpha: RGB is black everywhere, alpha 255 on a bar, else 0."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((10, 10, 30, 20), fill=(0, 0, 0, 255))
    image.save(path, format="PNG")
    return path


def make_cmyk_jpeg(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    """A CMYK JPEG of plain paper white (all inks 0)."""
    Image.new("CMYK", size, (0, 0, 0, 0)).save(path, format="JPEG", quality=95)
    return path


def make_exif_rotated_jpeg(path: Path, stored: tuple[int, int] = (80, 40)) -> Path:
    """A JPEG stored `stored` (w x h) with EXIF Orientation 6: it displays as h x w."""
    image = Image.new("RGB", stored, (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", exif=exif.tobytes())
    return path


# --- PDFs built byte by byte ----------------------------------------------------------------------


def pdf_stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< %s /Length %d >>\nstream\n%s\nendstream" % (extra, len(data), data)


def make_lying_pdf(path: Path, claimed: int, real: int = 3) -> Path:
    """`real` pages of 200 x 300 pt (text "page n"), in a page tree whose /Count says `claimed`."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(real))
    font = 3 + 2 * real
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, claimed),
    ]
    for i in range(real):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (3 + real + i, font)
        )
    for i in range(real):
        objects.append(pdf_stream(b"BT /F1 12 Tf 20 260 Td (page %d) Tj ET" % (i + 1)))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    path.write_bytes(build_pdf(objects))
    return path


def make_slow_pdf(path: Path, depth: int = 6, fan: int = 10) -> Path:
    """Page 1 draws a form that draws the next `fan` times, `depth` levels deep (fan**depth
    strokes); page 2 is one line. Both pages are 200 x 300 pt."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 5 0 R "
        b"/Resources << /XObject << /X 7 0 R >> >> >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 300] /Contents 6 0 R >>",
        pdf_stream(b"/X Do"),
        pdf_stream(b"0 0 0 RG 10 10 m 190 290 l S"),
    ]
    objects.extend(nested_forms(first=7, depth=depth, fan=fan))
    path.write_bytes(build_pdf(objects))
    return path


def nested_forms(first: int, depth: int = 6, fan: int = 10) -> list[bytes]:
    """Form XObjects numbered from `first`: each draws the next `fan` times, `depth` levels deep
    (fan**depth strokes in all: slow to render on purpose)."""
    forms = []
    for level in range(depth):
        if level < depth - 1:
            body = b" ".join(b"q 1 0 0 1 %d 0 cm /X Do Q" % (i % 3) for i in range(fan))
            resources = b"/Resources << /XObject << /X %d 0 R >> >>" % (first + level + 1)
        else:
            body, resources = b"0.5 w 10 10 m 190 290 l 190 10 l h S", b""
        forms.append(pdf_stream(body, b"/Type /XObject /Subtype /Form /BBox [0 0 200 300] " + resources))
    return forms
