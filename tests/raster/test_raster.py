"""raster: pages become RGB images lazily; failures name file and page; the stream stays bounded."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
from docgen import (
    make_16bit_tiff,
    make_cmyk_jpeg,
    make_encrypted_pdf,
    make_exif_rotated_jpeg,
    make_garbage_pdf,
    make_multiframe_tiff,
    make_pdf,
    make_png,
    make_rgba_ink_png,
    make_zero_page_pdf,
)
from PIL import Image

import ocrprune.raster.mupdf as raster
from ocrprune.config import RasterConfig
from ocrprune.errors import InputError
from ocrprune.inputs import Document, sniff_kind
from ocrprune.raster import (
    DocDone,
    DocFailed,
    DocOpened,
    PageRendered,
    PageStream,
    open_document,
    select_pages,
)

LOW = RasterConfig(dpi=18)


def doc_for(path: Path) -> Document:
    kind = sniff_kind(path) or "pdf"
    return Document(path.absolute(), path.name, PurePosixPath(path.stem), kind)  # type: ignore[arg-type]


def open_error(path: Path, cfg: RasterConfig = LOW) -> InputError:
    with pytest.raises(InputError) as info:
        open_document(doc_for(path), cfg)
    return info.value


def render_all(path: Path, cfg: RasterConfig = LOW) -> list[raster.RenderedPage]:
    with open_document(doc_for(path), cfg) as opened:
        return [opened.render(n) for n in opened.page_numbers]


def test_pdf_pages_render_as_rgb_at_the_configured_dpi(tmp_path: Path) -> None:
    pages = render_all(make_pdf(tmp_path / "a.pdf", 2, size=(72, 144)), RasterConfig(dpi=144))
    assert [(p.page, p.image.mode, p.image.size, p.dpi, p.error) for p in pages] == [
        (1, "RGB", (144, 288), 144.0, None),
        (2, "RGB", (144, 288), 144.0, None),
    ]
    assert pages[0].image.getpixel((143, 287)) == (255, 255, 255)


def test_pdf_rotate_is_honoured(tmp_path: Path) -> None:
    [page] = render_all(
        make_pdf(tmp_path / "r.pdf", size=(72, 144), rotate=90), RasterConfig(dpi=72)
    )
    assert page.image.size == (144, 72)


def test_encrypted_pdf_needs_the_right_password(tmp_path: Path) -> None:
    path = make_encrypted_pdf(tmp_path / "locked.pdf", "s3cret")
    assert str(open_error(path)) == "locked.pdf: encrypted: needs a password; put it in a file and pass --password-file FILE (or set OCRPRUNE_PASSWORD)"
    wrong = open_error(path, RasterConfig(dpi=18, password="nope"))
    assert (wrong.kind, wrong.detail) == (
        "encrypted",
        "the password given with --password is wrong",
    )
    pages = render_all(path, RasterConfig(dpi=18, password="s3cret"))
    assert [p.page for p in pages if p.image is not None] == [1, 2]


def test_zero_page_empty_and_corrupt_pdfs_are_named_errors(tmp_path: Path) -> None:
    assert open_error(make_zero_page_pdf(tmp_path / "zero.pdf")).kind == "zero_pages"
    (tmp_path / "x.pdf").write_bytes(b"")
    assert open_error(tmp_path / "x.pdf").kind == "empty"
    assert open_error(make_garbage_pdf(tmp_path / "bad.pdf")).kind == "corrupt"
    full = make_pdf(tmp_path / "full.pdf", 30).read_bytes()
    (tmp_path / "cut.pdf").write_bytes(full[: len(full) * 3 // 10])
    try:
        pages = render_all(tmp_path / "cut.pdf")
    except InputError as exc:
        assert exc.kind == "corrupt"
    else:  # MuPDF may recover some pages; each must then render or carry a page error
        assert all((p.image is None) != (p.error is None) for p in pages)


def test_missing_file_at_open_time_is_reported(tmp_path: Path) -> None:
    doc = Document(tmp_path / "gone.pdf", "gone.pdf", PurePosixPath("gone"), "pdf")
    with pytest.raises(InputError, match="gone.pdf: missing"):
        open_document(doc, LOW)


def test_one_failing_page_does_not_stop_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = raster.rasterize_pdf_page

    def crash_on_page_2(page, dpi, max_pixels):  # type: ignore[no-untyped-def]
        if page.number == 1:
            raise RuntimeError("boom")
        return real(page, dpi, max_pixels)

    monkeypatch.setattr(raster, "rasterize_pdf_page", crash_on_page_2)
    pages = render_all(make_pdf(tmp_path / "three.pdf", 3))
    assert [p.image is not None for p in pages] == [True, False, True]
    error = pages[1].error
    assert error is not None and (error.kind, error.page) == ("render_error", 2)
    assert str(error) == "three.pdf page 2: render_error: RuntimeError: boom"


def test_pixel_cap_lowers_the_dpi_of_a_huge_page(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "huge.pdf", size=(14400, 14400), text=None)
    [page] = render_all(path, RasterConfig(dpi=144, max_pixels=250_000))
    assert page.image.width * page.image.height <= 250_000
    assert page.image.size == (500, 500)
    assert page.dpi == pytest.approx(2.5)


def test_pages_selection_clips_and_can_select_nothing(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "ten.pdf", 10)
    with open_document(doc_for(path), RasterConfig(dpi=18, pages=((7, 7), (1, 3), (9, 40)))) as od:
        assert od.page_numbers == [1, 2, 3, 7, 9, 10]
    error = open_error(path, RasterConfig(dpi=18, pages=((11, 20),)))
    assert error.kind == "no_pages_selected"
    assert select_pages(3, ()) == [1, 2, 3]


def test_every_tiff_frame_is_a_page(tmp_path: Path) -> None:
    pages = render_all(make_multiframe_tiff(tmp_path / "three.tif"))
    assert [(p.page, p.image.getpixel((0, 0))) for p in pages] == [
        (1, (60, 60, 60)),
        (2, (120, 120, 120)),
        (3, (180, 180, 180)),
    ]


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    [page] = render_all(make_16bit_tiff(tmp_path / "g16.tif", size=(64, 8)))
    row = [page.image.getpixel((x, 0))[0] for x in range(64)]
    assert row[0] == 0 and row[-1] == 255
    assert 120 <= row[32] <= 135
    assert row == sorted(row) and len(set(row)) > 50


def test_transparent_black_ink_lands_on_white(tmp_path: Path) -> None:
    [page] = render_all(make_rgba_ink_png(tmp_path / "ink.png"))
    assert page.image.mode == "RGB"
    assert page.image.getpixel((0, 0)) == (255, 255, 255)
    assert page.image.getpixel((20, 15)) == (0, 0, 0)


def test_cmyk_paper_comes_out_white(tmp_path: Path) -> None:
    [page] = render_all(make_cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert min(page.image.getpixel((5, 5))) >= 250


def test_exif_orientation_makes_the_page_upright(tmp_path: Path) -> None:
    [page] = render_all(make_exif_rotated_jpeg(tmp_path / "turned.jpg", stored=(80, 40)))
    assert page.image.size == (40, 80)


def test_palette_one_bit_and_webp_images_become_rgb(tmp_path: Path) -> None:
    base = Image.new("RGB", (20, 10), (255, 255, 255))
    base.convert("P").save(tmp_path / "p.gif")
    base.convert("1").save(tmp_path / "bw.tif")
    base.save(tmp_path / "w.webp", lossless=True)
    base.save(tmp_path / "b.bmp")
    for name in ("p.gif", "bw.tif", "w.webp", "b.bmp"):
        [page] = render_all(tmp_path / name)
        assert (page.image.mode, page.image.size, page.image.getpixel((3, 3))) == (
            "RGB",
            (20, 10),
            (255, 255, 255),
        ), name


def test_huge_image_is_downscaled_keeping_aspect(tmp_path: Path) -> None:
    path = make_png(tmp_path / "wide.png", size=(4000, 1000))
    [page] = render_all(path, RasterConfig(dpi=18, max_pixels=40_000))
    assert page.image.size == (400, 100)
    assert page.dpi == pytest.approx(7.2)


def test_unidentifiable_image_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert open_error(tmp_path / "bad.png").kind == "corrupt"


def events_of(stream: PageStream) -> list[tuple[str, int, int | None]]:
    out: list[tuple[str, int, int | None]] = []
    for ev in stream:
        page = ev.page.page if isinstance(ev, PageRendered) else None
        out.append((type(ev).__name__, ev.index, page))
    return out


def test_stream_delivers_documents_and_pages_in_order(tmp_path: Path) -> None:
    docs = [
        doc_for(make_pdf(tmp_path / "a.pdf", 2)),
        doc_for(make_zero_page_pdf(tmp_path / "z.pdf")),
        doc_for(make_multiframe_tiff(tmp_path / "t.tif", frames=2)),
    ]
    with PageStream(docs, LOW) as stream:
        assert events_of(stream) == [
            ("DocOpened", 0, None),
            ("PageRendered", 0, 1),
            ("PageRendered", 0, 2),
            ("DocDone", 0, None),
            ("DocFailed", 1, None),
            ("DocOpened", 2, None),
            ("PageRendered", 2, 1),
            ("PageRendered", 2, 2),
            ("DocDone", 2, None),
        ]


def test_stream_reports_unexpected_worker_errors_and_goes_on(tmp_path: Path) -> None:
    docs = [doc_for(make_pdf(tmp_path / "a.pdf")), doc_for(make_pdf(tmp_path / "b.pdf"))]

    def opener(doc: Document, cfg: RasterConfig) -> raster.OpenedDocument:
        if doc.display == "a.pdf":
            raise KeyError("surprise")
        return open_document(doc, cfg)

    events = list(PageStream(docs, LOW, opener=opener))
    assert isinstance(events[0], DocFailed)
    assert str(events[0].error) == "a.pdf: internal: KeyError: 'surprise'"
    assert [type(e) for e in events[1:]] == [DocOpened, PageRendered, DocDone]


def test_stream_stays_bounded_with_a_slow_consumer(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "long.pdf", 300, size=(72, 72))
    pages: list[int] = []
    with PageStream([doc_for(path)], LOW, max_pages_in_flight=8) as stream:
        for ev in stream:
            if isinstance(ev, PageRendered):
                pages.append(ev.page.page)
                time.sleep(0.2 if len(pages) == 1 else 0.001)  # the worker gets far ahead
    assert pages == list(range(1, 301))
    assert stream.max_queued == 8  # the queue filled up and never went past its bound


def test_closing_early_stops_the_worker(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "long.pdf", 200, size=(72, 72))
    stream = PageStream([doc_for(path)] * 3, LOW, max_pages_in_flight=4)
    with stream:
        for ev in stream:
            if isinstance(ev, PageRendered) and ev.page.page == 5:
                break
    assert not stream.worker_alive


def test_raster_and_inputs_do_not_import_torch() -> None:
    code = "import ocrprune.raster, ocrprune.inputs, sys; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
