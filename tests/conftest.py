"""Shared fixtures: the tiny random model, a tiny checkpoint in the official DeepSeek-OCR layout,
and page images drawn in code. Nothing here touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_MODEL = SHARED / "deepseek-ocr"


def draw_page(size: tuple[int, int] = (620, 877), lines: int = 12, seed: int = 0) -> Image.Image:
    """A white page with dark text-like bars: deterministic, content varies with `seed`."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    width, height = size
    for i in range(lines):
        y = int(height * (0.08 + 0.8 * i / max(lines, 1)))
        length = int(width * (0.3 + 0.6 * (((i + 1) * (seed + 3) * 37) % 100) / 100))
        draw.rectangle([int(width * 0.08), y, int(width * 0.08) + length, y + max(2, height // 80)], fill=(20, 20, 20))
        draw.text((int(width * 0.08), y + height // 60), f"line {i} seed {seed}", fill=(0, 0, 0))
    return image


@pytest.fixture(scope="session")
def tiny_loaded():
    from ocrprune.config import ModelConfig
    from ocrprune.runtime.loading import load_model

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
def tiny_checkpoint(tmp_path_factory):
    """(folder, model) — the tiny model saved as the hub repository lays DeepSeek-OCR out."""
    from ocrprune.runtime.tiny import build_tiny_random

    folder = tmp_path_factory.mktemp("tiny-official")
    model, tokenizer = build_tiny_random(seed=1)
    model.save_pretrained(folder)  # transformers writes the original DeepSeek-OCR key names
    (folder / "config.json").write_text(json.dumps(official_config_for(model), indent=1))
    tokenizer.save_pretrained(folder)
    return folder, model
