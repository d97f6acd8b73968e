"""Shared fixtures: the tiny random model, a tiny checkpoint in the official DeepSeek-OCR layout,
and page images drawn in code. Nothing here touches the network.

Two opt-ins keep the default run fast and green on a fresh clone:

* `--runslow`: tests marked `slow` (benchmark smoke runs, kill -9, long subprocess runs) are skipped
  unless it is given; `.ci/run` gives it.
* `../shared` (the project's reference files: the real DeepSeek-OCR config and tokenizer, the
  hostile test cases) exists only on this project's machines. A test that needs it asks for the
  `shared_dir` or `shared_model` fixture, carries `@pytest.mark.shared`, or names `SHARED` /
  `SHARED_MODEL` in its body; each is skipped with one line when the folder is absent, never failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODEL = SHARED / "deepseek-ocr"
SLOW_REASON = "needs --runslow"


def needs_shared_reason(path: Path) -> str:
    """The one-line skip reason for a test whose reference folder is missing."""
    where = path.relative_to(SHARED.parent)
    return f"needs ../{where} beside the repository (reference files; absent on a fresh clone)"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="also run tests marked slow (CI does)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared: reads ../shared; skipped with a reason when that folder is absent"
    )


def _shared_path_needed(item: pytest.Item) -> Path | None:
    """The ../shared path `item` reads, from its marker, fixtures or the names its body uses."""
    code = getattr(getattr(item, "function", None), "__code__", None)
    names = set(code.co_names) if code is not None else set()
    fixtures = set(getattr(item, "fixturenames", ()))
    if "SHARED_MODEL" in names or "shared_model" in fixtures:
        return SHARED_MODEL
    if "SHARED" in names or "shared_dir" in fixtures or item.get_closest_marker("shared"):
        return SHARED
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip slow tests without --runslow, and tests whose ../shared folder is absent."""
    run_slow = config.getoption("--runslow")
    for item in items:
        if not run_slow and item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.skip(reason=SLOW_REASON))
        needed = _shared_path_needed(item)
        if needed is not None and not needed.is_dir():
            item.add_marker(pytest.mark.skip(reason=needs_shared_reason(needed)))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared, or a skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(needs_shared_reason(SHARED))
    return SHARED


@pytest.fixture(scope="session")
def shared_model() -> Path:
    """../shared/deepseek-ocr (the real config and tokenizer, no weights), or a skip."""
    if not SHARED_MODEL.is_dir():
        pytest.skip(needs_shared_reason(SHARED_MODEL))
    return SHARED_MODEL


def draw_page(size: tuple[int, int] = (620, 877), lines: int = 12, seed: int = 0) -> Image.Image:
    """A white page with dark text-like bars: deterministic, content varies with `seed`."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    for i in range(lines):
        y = int(height * (0.08 + 0.8 * i / max(lines, 1)))
        length = int(width * (0.3 + 0.6 * (((i + 1) * (seed + 3) * 37) % 100) / 100))
        draw.rectangle(
            [int(width * 0.08), y, int(width * 0.08) + length, y + max(2, height // 80)],
            fill=(20, 20, 20),
        )
        draw.text((int(width * 0.08), y + height // 60), f"line {i} seed {seed}", fill=(0, 0, 0))
    return image


@pytest.fixture(scope="session")
def tiny_loaded():
    from ocrprune.config import ModelConfig
    from ocrprune.runtime.hf.loading import load_model

    return load_model(ModelConfig(model="tiny-random", device="cpu"))


def official_config_for(model) -> dict:
    """An official-style (`deepseek_vl_v2`) config.json describing the tiny model's sizes."""
    official = json.loads((SHARED_MODEL / "config.json").read_text())
    text = model.config.text_config
    sam = model.config.vision_config.sam_config
    clip = model.config.vision_config.encoder_config
    language = dict(official["language_config"])
    language.update(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        moe_intermediate_size=text.moe_intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        n_routed_experts=text.n_routed_experts,
        n_shared_experts=text.n_shared_experts,
        num_experts_per_tok=text.num_experts_per_tok,
        first_k_dense_replace=1,
    )
    official["language_config"] = language
    official["vision_config"]["width"]["sam_vit_b"].update(
        width=sam.hidden_size,
        layers=sam.num_hidden_layers,
        heads=sam.num_attention_heads,
        global_attn_indexes=list(sam.global_attn_indexes),
        downsample_channels=list(sam.downsample_channels),
        mlp_dim=sam.mlp_dim,
        output_channels=sam.output_channels,
    )
    official["vision_config"]["width"]["clip-l-14-224"].update(
        width=clip.hidden_size,
        layers=clip.num_hidden_layers,
        heads=clip.num_attention_heads,
        intermediate_size=clip.intermediate_size,
    )
    official["image_token_id"] = model.config.image_token_id
    return official


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shared_model):
    """(folder, model) — the tiny model saved as the hub repository lays DeepSeek-OCR out."""
    from ocrprune.runtime.hf.tiny import build_tiny_random

    folder = tmp_path_factory.mktemp("tiny-official")
    model, tokenizer = build_tiny_random(seed=1)
    model.save_pretrained(folder)  # transformers writes the original DeepSeek-OCR key names
    (folder / "config.json").write_text(json.dumps(official_config_for(model), indent=1))
    tokenizer.save_pretrained(folder)
    return folder, model
