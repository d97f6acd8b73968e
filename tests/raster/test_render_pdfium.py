"""--renderer pdfium: the same page sizes, pixel cap and error kinds as MuPDF, or a clear error.

Tests that need pypdfium2 skip without it (it is the optional extra `ocrprune[pdfium]`); the
one over ../shared/cases skips when that folder is absent.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import pytest
from docgen import (
    make_encrypted_pdf,
    make_garbage_pdf,
    make_lying_pdf,
    make_pdf,
    make_zero_page_pdf,
)
from test_render_limits import summary

from ocrprune.config import RasterConfig
from ocrprune.errors import DependencyError, ExitCode, InputError
from ocrprune.inputs import Document
from ocrprune.raster import (
    DocDone,
    DocFailed,
    PageRendered,
    PageStream,
    RenderedPage,
    check_renderer,
    open_document,
)

try:
    import pypdfium2  # noqa: F401

    HAVE_PDFIUM = True
except ImportError:
    HAVE_PDFIUM = False

needs_pdfium = pytest.mark.skipif(not HAVE_PDFIUM, reason="pypdfium2 is not installed")
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "sample_docs").glob("*.pdf"))
CASES = ROOT.parent / "shared" / "cases"
ERROR_KINDS = {
    "empty",
    "corrupt",
    "zero_pages",
    "encrypted",
    "no_pages_selected",
    "too_large",
    "missing",
    "not_a_document",
    "unreadable",
    "render_error",
}


def pdf_doc(path: Path, display: str | None = None) -> Document:
    return Document(path, display or path.name, PurePosixPath("out"), "pdf")


def render_with(path: Path, renderer: str, **cfg: object) -> list[RenderedPage]:
    config = RasterConfig(renderer=renderer, **cfg)  # type: ignore[arg-type]
    with open_document(pdf_doc(path), config) as opened:
        return [opened.render(n) for n in opened.page_numbers]


def open_error(path: Path, renderer: str, **cfg: object) -> str:
    with pytest.raises(InputError) as info:
        open_document(pdf_doc(path), RasterConfig(renderer=renderer, **cfg))  # type: ignore[arg-type]
    return str(info.value)


def test_a_missing_pypdfium2_is_an_environment_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # makes `import pypdfium2` fail
    with pytest.raises(DependencyError) as info:
        check_renderer("pdfium")
    assert str(info.value) == "--renderer pdfium needs pypdfium2: pip install 'ocrprune[pdfium]'"
    assert info.value.exit_code == ExitCode.ENVIRONMENT
    check_renderer("mupdf")  # needs nothing extra


@needs_pdfium
def test_check_renderer_passes_when_pypdfium2_is_installed() -> None:
    assert check_renderer("pdfium") is None


@needs_pdfium
@pytest.mark.parametrize("dpi", [144, 100])
def test_both_renderers_give_the_same_page_sizes_on_the_samples(dpi: int) -> None:
    assert SAMPLES, "sample_docs/*.pdf are part of the repository"
    for path in SAMPLES:
        mupdf = render_with(path, "mupdf", dpi=dpi)
        pdfium = render_with(path, "pdfium", dpi=dpi)
        assert [(p.page, p.image.size, p.dpi) for p in pdfium] == [  # type: ignore[union-attr]
            (p.page, p.image.size, p.dpi)
            for p in mupdf  # type: ignore[union-attr]
        ], path.name


@needs_pdfium
def test_rotation_odd_sizes_and_the_pixel_cap_give_mupdfs_sizes(tmp_path: Path) -> None:
    import pymupdf

    doc = pymupdf.open()
    boxes = [
        (72, 144, 90),
        (200.4, 300.6, 0),
        (595.276, 841.89, 270),
        (3.8, 3.8, 0),
        (612, 792, 180),
    ]
    for width, height, rotate in boxes:
        page = doc.new_page(width=width, height=height)
        page.draw_rect(pymupdf.Rect(1, 1, width - 1, height - 1), color=(0, 0, 0), fill=(0, 0, 0))
        page.set_rotation(rotate)
    doc.save(tmp_path / "shapes.pdf")
    shifted = pymupdf.open()
    shifted.new_page(width=100, height=50).set_mediabox(pymupdf.Rect(10.25, 20.5, 110.25, 70.5))
    shifted.save(tmp_path / "shifted.pdf")
    expected = [(288, 144), (401, 602), (1684, 1191), (8, 8), (1224, 1584)]
    for renderer in ("mupdf", "pdfium"):
        pages = render_with(tmp_path / "shapes.pdf", renderer, dpi=144)
        assert [p.image.size for p in pages] == expected, renderer  # type: ignore[union-attr]
        assert pages[0].image.getpixel((144, 72)) == (0, 0, 0), renderer  # type: ignore[union-attr]
        [moved] = render_with(tmp_path / "shifted.pdf", renderer, dpi=144)
        assert moved.image.size == (200, 100), renderer  # type: ignore[union-attr]
        huge = make_pdf(tmp_path / "huge.pdf", size=(14400, 14400), text=None)
        [capped] = render_with(huge, renderer, dpi=144, max_pixels=250_000)
        assert (capped.image.size, round(capped.dpi, 3)) == ((500, 500), 2.5), renderer  # type: ignore[union-attr]


@needs_pdfium
def test_pdfium_names_the_same_error_kinds_as_mupdf(tmp_path: Path) -> None:
    (tmp_path / "empty.pdf").write_bytes(b"")
    make_zero_page_pdf(tmp_path / "zero.pdf")
    make_garbage_pdf(tmp_path / "junk.pdf")
    locked = make_encrypted_pdf(tmp_path / "locked.pdf", "s3cret")
    for renderer in ("mupdf", "pdfium"):
        assert open_error(tmp_path / "empty.pdf", renderer) == (
            "empty.pdf: empty: the file is empty (0 bytes)"
        )
        assert (
            open_error(tmp_path / "zero.pdf", renderer)
            == "zero.pdf: zero_pages: the PDF has no pages"
        )
        assert open_error(tmp_path / "junk.pdf", renderer).startswith("junk.pdf: corrupt: ")
        assert open_error(locked, renderer) == (
            "locked.pdf: encrypted: needs a password; put it in a file and pass --password-file FILE (or set OCRPRUNE_PASSWORD)"
        )
        assert open_error(locked, renderer, password="nope") == (
            "locked.pdf: encrypted: the password given with --password is wrong"
        )
        pages = render_with(locked, renderer, password="s3cret", dpi=72)
        assert [(p.page, p.image.size) for p in pages] == [(1, (200, 300)), (2, (200, 300))]  # type: ignore[union-attr]
        assert open_error(tmp_path / "gone.pdf", renderer) == (
            "gone.pdf: missing: the file no longer exists"
        )
    # A stale PDFium error from an earlier failure must not leak into the next document's kind.
    stream = PageStream(
        [pdf_doc(locked), pdf_doc(tmp_path / "zero.pdf"), pdf_doc(tmp_path / "junk.pdf")],
        RasterConfig(renderer="pdfium"),
    )
    assert [str(e.error) for e in stream if isinstance(e, DocFailed)] == [
        "locked.pdf: encrypted: needs a password; put it in a file and pass --password-file FILE (or set OCRPRUNE_PASSWORD)",
        "zero.pdf: zero_pages: the PDF has no pages",
        "junk.pdf: corrupt: cannot open as PDF: not a PDF or damaged beyond repair",
    ]


@needs_pdfium
def test_a_lying_page_count_ends_quickly_with_pdfium_too(tmp_path: Path) -> None:
    path = make_lying_pdf(tmp_path / "lies.pdf", claimed=100_000)
    rows = summary(list(PageStream([pdf_doc(path)], RasterConfig(dpi=72, renderer="pdfium"))))
    failed = "lies.pdf page {n}: render_error: PdfiumError: Failed to load page."
    assert rows == [
        ("opened", 100_000),
        ("page", 1, (200, 300)),
        ("page", 2, (200, 300)),
        ("page", 3, (200, 300)),
        ("page", 4, failed.format(n=4)),
        ("page", 5, failed.format(n=5)),
        ("page", 6, failed.format(n=6)),
        (
            "failed",
            "lies.pdf: render_error: pages 7-100000 were not rendered: they cannot be loaded, "
            "like the 3 pages before them (PdfiumError: Failed to load page.)",
        ),
    ]


@needs_pdfium
@pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases is absent (project machines only)")
@pytest.mark.slow  # ~500 pages twice; fast: test_both_renderers_give_the_same_page_sizes_on_the_samples, test_pdfium_names_the_same_error_kinds_as_mupdf
def test_every_case_pdf_gets_a_page_image_or_a_named_error_from_both_renderers() -> None:
    pdfs = sorted(p for p in CASES.rglob("*") if p.is_file() and p.suffix.lower() == ".pdf")
    docs = [pdf_doc(p, str(p.relative_to(CASES))) for p in pdfs]
    sizes: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}
    for renderer in ("mupdf", "pdfium"):
        cfg = RasterConfig(dpi=72, renderer=renderer, password="openpassword")
        expected: dict[int, set[int]] = {}
        sizes[renderer] = {}
        for event in PageStream(docs, cfg):
            if isinstance(event, PageRendered):
                page = event.page
                assert (page.image is None) != (page.error is None), (renderer, event.doc.display)
                if page.error is not None:
                    assert page.error.kind in ERROR_KINDS
                else:
                    sizes[renderer][(event.index, page.page)] = page.image.size  # type: ignore[union-attr]
                expected[event.index].discard(page.page)
            elif isinstance(event, DocFailed):
                assert event.error.kind in ERROR_KINDS, str(event.error)
                expected.pop(event.index, None)
            elif isinstance(event, DocDone):
                assert expected.pop(event.index) == set(), event.doc.display
            else:
                expected[event.index] = set(event.page_numbers)
        assert expected == {}, renderer
    assert sizes["pdfium"] == sizes["mupdf"]
    assert len(sizes["mupdf"]) >= 400  # 496 pages with pymupdf 2.0 / pypdfium2 5.15
