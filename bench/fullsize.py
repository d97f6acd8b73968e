"""The full-size DeepSeek-OCR architecture with random weights, and realistic pruned prompts for it.

* `build_model`: `UnlimitedOcrForConditionalGeneration` at the real sizes (3.3 B parameters, the
  same FLOPs as the released model), built straight in bf16 (or fp32) on the target device: modules
  are constructed under transformers' `no_init_weights`, so no fp32 copy and no slow init happens,
  then every tensor is filled from one shared pool of N(0, 1) samples (a copy, not a sampler call).
  Token embeddings N(0, 1), linear weights N(0, 0.02), routers N(0, 0.05) so that tokens spread over
  all 64 experts (runtime doc §8), norms 1, biases 0. `--quick` shrinks widths and depth.
* `page_blocks`: per page and mode, a feature block of the real layout (newlines, separator, Gundam
  tiles) from the page rendered through the real image processor. Its values are random but
  structured: each visual token is a page-wide background vector plus noise whose size grows with
  the Sobel edge density of its 64x64 patch, so blank areas are redundant and text is not. That
  gives RTPrune's `auto` a real r_txt (from the page) and a plausible, synthetic r_sim.
* `decoder_batch` / `time_decoder`: prefill and one decode step of the language model on a
  left-padded batch of pruned prompts with the gapped position ids the runtime uses.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from common import REPO, SAMPLE_DOCS, Guard, dtype_name, median, pick_device, sync

SHARED_CONFIG = REPO.parent / "shared" / "deepseek-ocr" / "config.json"
# DeepSeek-OCR's architecture (official config.json, public), used when ../shared is absent.
ARCHITECTURE: dict[str, Any] = {
    "language_config": {
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "hidden_size": 1280,
        "intermediate_size": 6848,
        "moe_intermediate_size": 896,
        "n_group": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_attention_heads": 10,
        "num_experts_per_tok": 6,
        "num_hidden_layers": 12,
        "num_key_value_heads": 10,
        "topk_group": 1,
        "topk_method": "greedy",
        "vocab_size": 129280,
    },
    "vision_config": {
        "width": {
            "clip-l-14-224": {"heads": 16, "layers": 24, "width": 1024},
            "sam_vit_b": {
                "downsample_channels": [512, 1024],
                "global_attn_indexes": [2, 5, 8, 11],
                "heads": 12,
                "layers": 12,
                "width": 768,
            },
        }
    },
}
QUICK_TEXT = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
}
QUICK_VISION = {
    "clip-l-14-224": {"heads": 4, "layers": 2, "width": 64, "intermediate_size": 128},
    "sam_vit_b": {
        "downsample_channels": [32, 64],
        "global_attn_indexes": [1],
        "heads": 4,
        "layers": 2,
        "width": 32,
        "mlp_dim": 64,
        "output_channels": 16,
    },
}
# The default prompt "<image>\n<|grounding|>Convert the document to markdown." with DeepSeek-OCR's
# tokenizer (runtime doc §8): BOS, the image block, then 9 text tokens.
PREFIX_IDS = (0,)
SUFFIX_IDS = (201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16)
MODES = ("tiny", "small", "base", "large", "gundam")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """`--dtype` and `--modes`, shared by the scripts that run the full-size model."""
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument(
        "--modes", default=None, help="comma-separated modes (default all; quick tiny,gundam)"
    )


def model_settings(args: argparse.Namespace) -> tuple[torch.device, torch.dtype, list[str]]:
    """Device, dtype and the modes to run, from `add_model_options` (and `--device`, `--quick`)."""
    modes = args.modes or ("tiny,gundam" if args.quick else ",".join(MODES))
    return (
        pick_device(args.device),
        torch.bfloat16 if args.dtype == "bf16" else torch.float32,
        [m.strip() for m in modes.split(",") if m.strip()],
    )


def official_config(quick: bool) -> tuple[Any, str]:
    """The native config (and where its numbers came from); `quick` shrinks it to toy widths."""
    from ocrprune.runtime.hf.loading import native_config

    if SHARED_CONFIG.exists():
        raw, source = (
            json.loads(SHARED_CONFIG.read_text()),
            str(SHARED_CONFIG.relative_to(REPO.parent)),
        )
    else:
        raw, source = json.loads(json.dumps(ARCHITECTURE)), "bench/fullsize.py ARCHITECTURE"
    if quick:
        raw["language_config"].update(QUICK_TEXT)
        raw["vision_config"]["width"] = json.loads(json.dumps(QUICK_VISION))
        source += " (quick: toy widths)"
    return native_config(raw), source


@torch.no_grad()
def build_model(
    device: torch.device, dtype: torch.dtype, quick: bool = False, seed: int = 0
) -> tuple[Any, str]:
    """The random-weight model in `dtype` on `device`, eval mode; and the config's source."""
    from transformers import UnlimitedOcrForConditionalGeneration
    from transformers.initialization import no_init_weights

    config, source = official_config(quick)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), torch.device(device):
            model = UnlimitedOcrForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pool = torch.randn((1 << 22) + 1021, generator=generator).to(device=device, dtype=dtype)
    scaled: dict[float, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if param.dim() < 2 and not name.endswith(("image_newline", "view_separator")):
            param.zero_()
            continue
        std = 1.0 if "embed_tokens" in name or param.dim() < 2 else 0.02
        if std not in scaled:
            scaled[std] = pool * std
        _fill(param, scaled[std], int(torch.randint(pool.numel(), (1,), generator=generator)))
    for module in model.modules():
        kind = type(module).__name__
        if "Norm" in kind and getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if kind.endswith("TopkRouter"):
            module.weight.normal_(
                0.0, 0.05, generator=torch.Generator(device=device).manual_seed(seed)
            )
            seed += 1
    return model.eval(), source


def _fill(param: torch.Tensor, pool: torch.Tensor, offset: int) -> None:
    flat = param.view(-1)
    done, n = 0, flat.numel()
    while done < n:
        take = min(pool.numel() - offset, n - done)
        flat[done : done + take].copy_(pool[offset : offset + take])
        done += take
        offset = 0


# ---- pages and feature blocks ------------------------------------------------------------------


def sample_pages(count: int, dpi: int = 144) -> list[Any]:
    """`count` page images from sample_docs/ (rendered by our raster path), cycled if needed."""
    from ocrprune.config import RasterConfig
    from ocrprune.inputs import expand_inputs
    from ocrprune.raster import open_document

    docs, _ = expand_inputs([str(SAMPLE_DOCS)])
    pages = []
    for doc in docs:
        with open_document(doc, RasterConfig(dpi=dpi)) as opened:
            pages += [opened.render(n).image for n in opened.page_numbers]
    pages = [p for p in pages if p is not None]
    return [pages[i % len(pages)] for i in range(count)]


def patch_density(view: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Sobel edge-pixel share of each patch of `[3, H, W]` (normalised to [-1, 1]): `[rows, cols]`."""
    _, height, width = view.shape
    ph, pw = height // rows, width // cols
    gray = (0.299 * view[0] + 0.587 * view[1] + 0.114 * view[2]).float()[: ph * rows, : pw * cols]
    patches = gray.reshape(rows, ph, cols, pw).permute(0, 2, 1, 3).reshape(rows * cols, 1, ph, pw)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    grads = F.conv2d(patches, torch.stack([kx, kx.T])[:, None], padding=1)  # [P, 2, ph, pw]
    return (grads.pow(2).sum(1).sqrt() > 0.2).float().mean((1, 2)).reshape(rows, cols)


@dataclass
class PageBlock:
    features: torch.Tensor  # [L, D]
    layout: Any  # models.deepseek_ocr_v1.ImageLayout
    global_view: torch.Tensor  # [3, S, S]


def page_blocks(pages: Sequence[Any], mode: str, hidden: int, seed: int = 0) -> list[PageBlock]:
    """Structured feature blocks (see the module docstring), fp32 on the CPU."""
    from ocrprune.models.deepseek_ocr_v1 import ImageLayout
    from ocrprune.runtime.hf.preprocess import image_processor_for, preprocess

    vision = preprocess(list(pages), mode, image_processor_for(mode))
    generator = torch.Generator().manual_seed(seed)
    newline, separator = torch.randn(2, hidden, generator=generator)
    blocks, tile_start = [], 0
    for i, geo in enumerate(vision.geometry):
        layout = ImageLayout(geo.global_grid, geo.local_rows, geo.local_cols)
        background = torch.randn(hidden, generator=generator)
        parts = []
        if geo.local_rows:
            cols, rows = vision.patches_grid[i]
            count = vision.num_local_patches[i]
            tiles = vision.pixel_values_local[
                tile_start : tile_start + count
            ]  # [rows*cols, 3, T, T]
            tile_start += count
            size = tiles.shape[-1]
            stitched = (
                tiles.reshape(rows, cols, 3, size, size)
                .permute(2, 0, 3, 1, 4)
                .reshape(3, rows * size, cols * size)
            )
            parts.append(
                _grid(
                    patch_density(stitched, geo.local_rows, geo.local_cols),
                    background,
                    newline,
                    generator,
                )
            )
        density = patch_density(vision.pixel_values[i], geo.global_grid, geo.global_grid)
        parts.append(_grid(density, background, newline, generator))
        parts.append(separator[None])
        features = torch.cat(parts)
        assert features.shape[0] == layout.length
        blocks.append(PageBlock(features, layout, vision.pixel_values[i]))
    return blocks


def _grid(
    density: torch.Tensor,
    background: torch.Tensor,
    newline: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """`[rows, cols]` densities -> `[rows * (cols + 1), D]`: tokens then a newline, row by row."""
    rows, cols = density.shape
    noise = torch.randn(rows, cols, background.numel(), generator=generator)
    tokens = background + (0.5 + 4.0 * density)[..., None] * noise  # [rows, cols, D]
    with_newlines = torch.cat([tokens, newline.expand(rows, 1, -1)], dim=1)  # [rows, cols + 1, D]
    return with_newlines.reshape(rows * (cols + 1), -1)


# ---- the decoder ------------------------------------------------------------------------------


@dataclass
class PromptRow:
    embeds: torch.Tensor  # [T, D]
    positions: torch.Tensor  # [T] gapped, original positions
    next_position: int  # unpruned prompt length: where decoding continues
    visual_total: int
    visual_kept: int
    ratio: float


def pruned_prompt(
    model: Any, block: PageBlock, keep: Any, device: torch.device, dtype: torch.dtype
) -> PromptRow:
    """Prune one block as the runtime does and wrap it in the default prompt's text tokens."""
    from ocrprune import rtprune

    features = block.features.to(device=device, dtype=dtype)
    view = block.global_view.to(device) if keep == "auto" else None
    result = rtprune.prune_image(features, block.layout, keep, global_view=view)
    embed = model.model.language_model.embed_tokens
    prefix = embed(torch.tensor(PREFIX_IDS, device=device))
    suffix = embed(torch.tensor(SUFFIX_IDS, device=device))
    embeds = torch.cat([prefix, result.embeddings.to(prefix.dtype), suffix])
    positions = rtprune.gapped_positions(
        len(PREFIX_IDS), result.positions, len(SUFFIX_IDS), block.layout.length
    )
    record = result.record
    return PromptRow(
        embeds,
        positions.to(device),
        len(PREFIX_IDS) + block.layout.length + len(SUFFIX_IDS),
        record.visual_total,
        record.visual_kept,
        record.ratio,
    )


@dataclass
class DecoderBatch:
    embeds: torch.Tensor  # [B, T, D], left-padded with zeros
    mask: torch.Tensor  # [B, T]
    positions: torch.Tensor  # [B, T], pads at 0
    step_embeds: torch.Tensor  # [B, 1, D]
    step_positions: torch.Tensor  # [B, 1]
    lengths: list[int]


def decoder_batch(model: Any, rows: Sequence[PromptRow]) -> DecoderBatch:
    width = max(r.embeds.shape[0] for r in rows)
    device, dtype = rows[0].embeds.device, rows[0].embeds.dtype
    batch = len(rows)
    embeds = torch.zeros(batch, width, rows[0].embeds.shape[1], device=device, dtype=dtype)
    mask = torch.zeros(batch, width, dtype=torch.long, device=device)
    positions = torch.zeros(batch, width, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        n = row.embeds.shape[0]
        embeds[i, width - n :] = row.embeds
        mask[i, width - n :] = 1
        positions[i, width - n :] = row.positions
    token = model.model.language_model.embed_tokens(torch.tensor([[SUFFIX_IDS[0]]], device=device))
    step_positions = torch.tensor([[r.next_position] for r in rows], device=device)
    return DecoderBatch(
        embeds,
        mask,
        positions,
        token.expand(batch, 1, -1).contiguous(),
        step_positions,
        [r.embeds.shape[0] for r in rows],
    )


@torch.inference_mode()
def decoder_sample(model: Any, batch: DecoderBatch, device: torch.device) -> tuple[float, float]:
    """(prefill ms, first decode step ms) for the whole batch: decoder layers and final norm only,
    as the paper times them (spec §8); the LM head is left out of both."""
    from transformers import DynamicCache

    lm = model.model.language_model
    cache = DynamicCache(config=lm.config)
    sync(device)
    t0 = _now()
    lm(
        inputs_embeds=batch.embeds,
        attention_mask=batch.mask,
        position_ids=batch.positions,
        past_key_values=cache,
        use_cache=True,
    )
    sync(device)
    t1 = _now()
    step_mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
    lm(
        inputs_embeds=batch.step_embeds,
        attention_mask=step_mask,
        position_ids=batch.step_positions,
        past_key_values=cache,
        use_cache=True,
    )
    sync(device)
    t2 = _now()
    return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0


def _now() -> float:
    return time.perf_counter()


def time_interleaved(
    model: Any,
    batches: dict[str, DecoderBatch],
    device: torch.device,
    repeats: int,
    guard: Guard,
    warmup: int = 1,
) -> dict[str, tuple[float, float]]:
    """Median (prefill, decode) per key; keys are measured in turn within each repeat so that drift
    on the machine hits every setting alike. The warm-up pass is not counted."""
    samples: dict[str, list[tuple[float, float]]] = {key: [] for key in batches}
    for rep in range(warmup + repeats):
        for key, batch in batches.items():
            result = (
                guard.measure(lambda b=batch: decoder_sample(model, b, device))
                if rep >= warmup
                else decoder_sample(model, batch, device)
            )
            if rep >= warmup:
                samples[key].append(result)
    return {
        key: (median([s[0] for s in v]), median([s[1] for s in v])) for key, v in samples.items()
    }


def keep_key(keep: Any) -> str:
    from ocrprune.config import keep_label

    return keep_label(keep)


def gflops_per_token(config: Any) -> float:
    """Decoder linear FLOPs per prompt token (spec §8 estimate), for the record."""
    t = config.text_config
    d = t.hidden_size
    attention = 8 * d * d
    dense = 6 * d * t.intermediate_size
    moe = (
        6 * d * t.moe_intermediate_size * (t.num_experts_per_tok + t.n_shared_experts)
        + 2 * d * t.n_routed_experts
    )
    layers = t.num_hidden_layers
    sparse = sum(1 for kind in t.mlp_layer_types if kind == "sparse")
    return (layers * attention + (layers - sparse) * dense + sparse * moe) / 1e9


# ---- the whole model as the runtime loads it ------------------------------------------------------

SHARED_TOKENIZER = REPO.parent / "shared" / "deepseek-ocr"


def loaded_model(device: torch.device, dtype: torch.dtype, quick: bool) -> tuple[Any, str]:
    """A `LoadedModel` the runtime's `Engine` can drive, and a description.

    Quick: the built-in tiny-random model. Full: the full-size random model with DeepSeek-OCR's own
    tokenizer when `../shared/deepseek-ocr/` has it (else the tiny tokenizer, so prompts are longer).
    """
    from ocrprune.config import ModelConfig
    from ocrprune.runtime.hf.loading import LoadedModel, load_model, load_tokenizer
    from ocrprune.runtime.hf.tiny import build_tiny_tokenizer

    if quick:
        loaded = load_model(
            ModelConfig(model="tiny-random", device=device.type, dtype=dtype_name(dtype))
        )
        return loaded, "tiny-random"
    model, source = build_model(device, dtype)
    if (SHARED_TOKENIZER / "tokenizer.json").exists():
        tokenizer, described = load_tokenizer(SHARED_TOKENIZER), "DeepSeek-OCR tokenizer"
    else:
        tokenizer, described = (
            build_tiny_tokenizer(),
            "tiny tokenizer (../shared absent: prompts are longer)",
        )
    model.config.image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        model_id="full-size random (bench)",
        revision=None,
        dummy=True,
        image_token_id=model.config.image_token_id,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        max_positions=8192,
    )
    return loaded, f"full-size random weights ({source}), {described}"


def ban_eos(model: Any, eos_token_id: int) -> Any:
    """Make every page generate exactly max_new_tokens: the LM head never scores end-of-sequence.

    Returns the hook handle (call `.remove()` to undo)."""

    def hook(_module: Any, _inputs: Any, logits: torch.Tensor) -> torch.Tensor:
        logits[..., eos_token_id] = float("-inf")
        return logits

    return model.lm_head.register_forward_hook(hook)


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """KV-cache bytes one prompt token takes: 2 (K and V) x layers x kv heads x head dim x element size."""
    t = config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return 2 * t.num_hidden_layers * t.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8
