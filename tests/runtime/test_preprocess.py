"""Preprocessing per mode: the placeholder counts DeepSeek-OCR expects, EXIF and RGB handling."""

from __future__ import annotations

import pytest
from PIL import Image

from ocrprune.config import MODES
from ocrprune.runtime.hf.preprocess import (
    image_processor_for,
    normalize_page,
    placeholder_count,
    preprocess,
)


@pytest.mark.parametrize(
    ("mode", "expected"), [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)]
)
def test_placeholder_count_per_mode_matches_the_official_numbers(mode, expected):
    image = Image.new("RGB", (1240, 1754), "white")
    batch = preprocess([image], mode, image_processor_for(mode))
    assert batch.geometry[0].placeholders == expected
    assert placeholder_count(MODES[mode]) == expected
    assert batch.pixel_values.shape[-1] == MODES[mode].base_size


def test_gundam_a4_page_tiles_two_by_three_giving_903_placeholders():
    batch = preprocess([Image.new("RGB", (1240, 1754), "white")], "gundam", image_processor_for("gundam"))
    assert batch.patches_grid == [[2, 3]]
    assert batch.num_local_patches == [6]
    assert batch.geometry[0].placeholders == 273 + (10 * 3) * (10 * 2 + 1) == 903
    assert batch.pixel_values_local.shape == (6, 3, 640, 640)


@pytest.mark.parametrize(("cols", "rows"), [(2, 1), (3, 3), (1, 9)])
def test_gundam_placeholder_formula(cols, rows):
    assert placeholder_count(MODES["gundam"], cols, rows) == 273 + (10 * rows) * (10 * cols + 1)


def test_gundam_uses_no_tiles_when_both_sides_fit_640():
    batch = preprocess([Image.new("RGB", (600, 400), "white")], "gundam", image_processor_for("gundam"))
    assert batch.num_local_patches == [0]
    assert batch.pixel_values_local is None
    assert batch.geometry[0].placeholders == 273


def test_mixed_gundam_batch_keeps_each_pages_tile_grid():
    pages = [Image.new("RGB", s, "white") for s in [(1240, 1754), (500, 500), (1500, 900)]]
    batch = preprocess(pages, "gundam", image_processor_for("gundam"))
    assert batch.num_local_patches == [6, 0, 6]
    assert [g.placeholders for g in batch.geometry] == [903, 273, 273 + 20 * 31]


def test_normalize_page_applies_exif_rotation_and_rgb():
    image = Image.new("L", (80, 40), 200)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    upright = normalize_page(loaded)
    assert upright.size == (40, 80)
    assert upright.mode == "RGB"
