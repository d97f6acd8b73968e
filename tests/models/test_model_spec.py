"""The DeepSeek-OCR v1 model spec: the grid formula, placeholder counts and the plain token layout."""

from __future__ import annotations

import sys

import pytest

from ocrprune import config
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1, ImageLayout, grid_side


@pytest.mark.parametrize(
    ("mode", "grid", "placeholders"),
    [("tiny", 8, 73), ("small", 10, 111), ("base", 16, 273), ("large", 20, 421), ("gundam", 16, 273)],
)
def test_each_mode_has_its_global_grid_and_untiled_placeholder_count(mode, grid, placeholders):
    assert DEEPSEEK_OCR_V1.modes[mode].global_grid == grid
    assert DEEPSEEK_OCR_V1.placeholder_count(mode) == placeholders


def test_tiny_mode_has_64_visual_tokens_plus_8_newlines_and_a_separator():
    layout = DEEPSEEK_OCR_V1.layout("tiny").token_layout()
    assert layout.length == 73
    assert layout.length - layout.layout_total == 64
    assert layout.newlines == tuple(i * 9 + 8 for i in range(8))
    assert layout.separators == (72,)
    assert layout.density_grid == 8


def test_grid_formula_is_ceil_of_size_over_64():
    assert [grid_side(s) for s in (64, 65, 512, 640, 1000, 1024)] == [1, 2, 8, 10, 16, 16]


def test_gundam_tiled_layout_puts_the_stitched_local_grid_first():
    layout = DEEPSEEK_OCR_V1.layout("gundam", tiles_cols=3, tiles_rows=2)
    assert (layout.global_grid, layout.local_rows, layout.local_cols) == (16, 20, 30)
    assert DEEPSEEK_OCR_V1.placeholder_count("gundam", 3, 2) == 20 * 31 + 273 == 893
    plain = layout.token_layout()
    assert plain.newlines[:2] == (30, 61) and plain.newlines[20] == 620 + 16
    assert len(plain.newlines) == 36 and plain.separators == (892,)


def test_old_config_names_are_the_specs_values():
    assert config.DEFAULT_MODEL == DEEPSEEK_OCR_V1.hub_id == "deepseek-ai/DeepSeek-OCR"
    assert config.DEFAULT_REVISION == DEEPSEEK_OCR_V1.revision == "9f30c71f441d010e5429c532364a86705536c53a"
    assert config.MODES == dict(DEEPSEEK_OCR_V1.modes)
    assert config.PROMPTS == dict(DEEPSEEK_OCR_V1.prompts)


def test_special_token_facts():
    tokens = DEEPSEEK_OCR_V1.tokens
    assert (tokens.bos_id, tokens.eos_id, tokens.pad_id, tokens.image_id) == (0, 1, 2, 128815)
    assert tokens.all[:4] == (tokens.bos, tokens.eos, tokens.pad, "<image>")
    assert tokens.ngram_whitelist == ("<td>", "</td>")


def test_memory_estimate_for_a_gundam_page():
    # vision 2e9 / 4 + (1300 prompt + 4096 capped output) * 61440 bytes * 2
    assert DEEPSEEK_OCR_V1.memory.page_bytes("gundam", 8192) == 0.5e9 + 5396 * 61440 * 2


def test_the_spec_module_imports_without_torch():
    import subprocess

    code = "import sys, ocrprune.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_image_layout_rejects_half_a_local_grid():
    with pytest.raises(ValueError, match="both be 0 or both positive"):
        ImageLayout(16, local_rows=10)
