"""Grounding parser, figure crops and Markdown clean-ups on fixture strings."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from ocrprune.postprocess.grounding import (
    IMAGE_DIR_PLACEHOLDER,
    Span,
    parse_grounding,
    postprocess_page,
)
from ocrprune.records import Box

EOS = "<｜end▁of▁sentence｜>"

GOOD = (
    "<|ref|>title<|/ref|><|det|>[[100, 50, 900, 120]]<|/det|>\n# Annual Report\n\n"
    "<|ref|>text<|/ref|><|det|>[[100, 150, 900, 400]]<|/det|>\nRevenue grew by 12%.\n\n\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 420, 900, 700]]<|/det|>\n"
    "<table><tr><td>a</td><td>b</td></tr></table>" + EOS
)


def test_good_multi_span_text_becomes_clean_markdown_and_boxes() -> None:
    markdown, boxes, figures = postprocess_page(GOOD, None, 1)

    assert markdown == (
        "# Annual Report\n\nRevenue grew by 12%.\n\n<table><tr><td>a</td><td>b</td></tr></table>"
    )
    assert boxes == (
        Box("title", ((100, 50, 900, 120),), "# Annual Report"),
        Box("text", ((100, 150, 900, 400),), "Revenue grew by 12%."),
        Box("table", ((100, 420, 900, 700),), "<table><tr><td>a</td><td>b</td></tr></table>"),
    )
    assert figures == ()


def test_parse_grounding_reports_marker_positions_and_content() -> None:
    raw = "Intro <|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>Body"

    assert parse_grounding(raw) == [Span("text", ((1, 2, 3, 4),), 6, 54, "Body")]


def test_truncated_span_at_end_is_removed_without_a_box() -> None:
    raw = "Intro\n<|ref|>text<|/ref|><|det|>[[12, 3"

    assert postprocess_page(raw, None, 1) == ("Intro", (), ())
    assert parse_grounding(raw)[0].ok is False


@pytest.mark.parametrize("tail", ["<|ref|>tex", "<|re", "<|", "<|ref|>text<|/re", "<｜end▁of"])
def test_truncated_label_or_marker_at_end_is_removed(tail: str) -> None:
    assert postprocess_page("Intro\n" + tail, None, 1) == ("Intro", (), ())


def test_unclosed_det_before_next_span_keeps_the_text_after_its_coordinates() -> None:
    raw = (
        "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]Hello\n"
        "<|ref|>text<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>\nWorld"
    )

    markdown, boxes, _ = postprocess_page(raw, None, 1)

    assert markdown == "Hello\n\nWorld"
    assert boxes == (Box("text", ((5, 6, 7, 8),), "World"),)


def test_orphan_det_block_and_stray_markers_are_removed() -> None:
    raw = "A <|det|>[[1, 2, 3, 4]]<|/det|>B <|/ref|>C<|/det|>"

    assert postprocess_page(raw, None, 1) == ("A B C", (), ())


def test_ref_without_det_is_removed_and_its_text_kept() -> None:
    assert postprocess_page("A <|ref|>text<|/ref|>B", None, 1) == ("A B", (), ())


@pytest.mark.parametrize(
    "det",
    [
        "[[12, abc, 30, 40]]",
        "[[1, 2, 3]]",
        "[[1, 2, 3, 4, 5]]",
        "[]",
        "",
        "[[1,,2,3]]",
        "[[1e3,2,3,4]]",
    ],
)
def test_malformed_numbers_or_arity_give_no_box_but_keep_content(det: str) -> None:
    raw = f"<|ref|>text<|/ref|><|det|>{det}<|/det|>\nKept text"

    assert postprocess_page(raw, None, 1) == ("Kept text", (), ())


def test_only_well_formed_groups_of_a_span_become_boxes() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[1, 2, 3], [10.6, 20, 30, 40.4]]<|/det|>x"

    assert parse_grounding(raw)[0].boxes == ((11, 20, 30, 40),)


def test_two_box_span_records_both_boxes() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[10, 20, 30, 40], [50, 60, 70, 80]]<|/det|>\nTwo columns"

    _, boxes, _ = postprocess_page(raw, None, 1)

    assert boxes == (Box("text", ((10, 20, 30, 40), (50, 60, 70, 80)), "Two columns"),)


def test_out_of_range_and_reversed_coordinates_are_clamped_and_ordered() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[-5, 20, 1500, 10]]<|/det|>x"

    assert parse_grounding(raw)[0].boxes == ((0, 10, 999, 20),)


def test_weird_nested_brackets_still_yield_the_inner_box() -> None:
    raw = "<|ref|>text<|/ref|><|det|>[[[1, 2, 3, 4]]]]<|/det|>x"

    assert parse_grounding(raw)[0].boxes == ((1, 2, 3, 4),)


def test_text_without_spans_only_gets_the_official_cleanups() -> None:
    raw = "  Plain \\coloneqq a \\eqqcolon b\n\n\n\nEnd\n" + EOS + "\n"

    assert postprocess_page(raw, None, 3) == ("Plain := a =: b\n\nEnd", (), ())


def test_every_prefix_of_real_output_parses_without_raising_or_leaking_markers() -> None:
    raw = GOOD.replace("<|ref|>text", "<|ref|>image")
    page = Image.new("RGB", (50, 40), "white")
    for end in range(len(raw) + 1):
        markdown, _, _ = postprocess_page(raw[:end], page, 1)
        assert "<|" not in markdown and "|>" not in markdown


def _red_page() -> Image.Image:
    """A 999x999 white page (pixel == coordinate) with a red block at x 200..599, y 100..299."""
    page = Image.new("RGB", (999, 999), "white")
    ImageDraw.Draw(page).rectangle((200, 100, 599, 299), fill=(255, 0, 0))
    return page


def test_image_span_is_cropped_to_a_jpeg_and_linked_through_the_placeholder() -> None:
    raw = (
        "Before\n<|ref|>image<|/ref|><|det|>[[200, 100, 600, 300]]<|/det|>\n"
        "<|ref|>image_caption<|/ref|><|det|>[[200, 310, 600, 330]]<|/det|>\nFigure 1: red"
    )

    markdown, boxes, figures = postprocess_page(raw, _red_page(), 7)

    assert markdown == f"Before\n![]({IMAGE_DIR_PLACEHOLDER}/page0007_fig01.jpg)\n\nFigure 1: red"
    assert [b.label for b in boxes] == ["image", "image_caption"]
    assert [(f.name, f.box) for f in figures] == [("page0007_fig01.jpg", (200, 100, 600, 300))]
    crop = Image.open(io.BytesIO(figures[0].jpeg))
    assert crop.format == "JPEG" and crop.mode == "RGB" and crop.size == (400, 200)
    pixels = [crop.getpixel((x, y)) for x in range(0, 400, 4) for y in range(0, 200, 4)]
    red = sum(1 for r, g, b in pixels if r > 200 and g < 60 and b < 60)
    assert red / len(pixels) > 0.98


def test_image_span_with_two_boxes_gives_two_numbered_figures() -> None:
    raw = "<|ref|>image<|/ref|><|det|>[[200, 100, 400, 200], [0, 0, 999, 999]]<|/det|>"

    markdown, _, figures = postprocess_page(raw, _red_page(), 2)

    assert [f.name for f in figures] == ["page0002_fig01.jpg", "page0002_fig02.jpg"]
    assert Image.open(io.BytesIO(figures[1].jpeg)).size == (999, 999)
    assert markdown == (
        f"![]({IMAGE_DIR_PLACEHOLDER}/page0002_fig01.jpg)\n\n"
        f"![]({IMAGE_DIR_PLACEHOLDER}/page0002_fig02.jpg)"
    )


def test_zero_area_image_box_is_skipped_and_span_removed() -> None:
    raw = "A\n<|ref|>image<|/ref|><|det|>[[500, 500, 500, 700]]<|/det|>\nB"

    markdown, boxes, figures = postprocess_page(raw, _red_page(), 1)

    assert (markdown, figures) == ("A\n\nB", ())
    assert boxes == (Box("image", ((500, 500, 500, 700),), "B"),)


def test_image_span_without_page_image_records_box_but_no_figure() -> None:
    raw = "<|ref|>image<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>"

    assert postprocess_page(raw, None, 1) == ("", (Box("image", ((1, 2, 3, 4),), ""),), ())


def test_rgba_page_crops_to_rgb_jpeg() -> None:
    page = Image.new("RGBA", (100, 100), (0, 0, 255, 128))
    raw = "<|ref|>image<|/ref|><|det|>[[0, 0, 500, 500]]<|/det|>"

    _, _, figures = postprocess_page(raw, page, 1)

    crop = Image.open(io.BytesIO(figures[0].jpeg))
    assert (crop.mode, crop.size) == ("RGB", (50, 50))


def test_random_mixes_of_marker_fragments_never_raise_or_leak_markers() -> None:
    rng = random.Random(1234)
    pieces = ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "]]", "[", "]", ",", "12", "-3",
              "1500", "9.5", "x", "image", "text", "\n", " ", EOS]  # fmt: skip
    page = Image.new("RGB", (30, 20), "white")
    for _ in range(2000):
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        markdown, boxes, figures = postprocess_page(raw, page, 1)
        assert "<|" not in markdown and "|>" not in markdown
        assert all(0 <= v <= 999 for box in boxes for coords in box.boxes for v in coords)
        assert len(figures) <= sum(len(b.boxes) for b in boxes if b.label == "image")
