"""Page images to model inputs, per DeepSeek-OCR mode (runtime doc §1.3, §1.4, §2.2 pitfall 2).

We use transformers' own `UnlimitedOcrImageProcessor` with DeepSeek-OCR's settings, and build the
prompt ids ourselves the way the official pipeline does: `[BOS] + text before <image> + <image> x N +
text after`, each part tokenized without special tokens. That keeps the placeholder count in our
hands, which pruning needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageOps
from transformers import PreTrainedTokenizerBase, UnlimitedOcrImageProcessor

from ocrprune.config import MODES, ModeSpec
from ocrprune.models import deepseek_ocr_v1 as v1
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1, ImageLayout, layout_for

SPEC = DEEPSEEK_OCR_V1
PATCH = v1.PATCH  # SAM patch size; with the 4x downsample, one token per 64x64 pixels
DOWNSAMPLE = v1.DOWNSAMPLE
MAX_TILES = SPEC.processor.max_tiles
MIN_TILES = SPEC.processor.min_tiles


def image_processor_for(mode: str) -> UnlimitedOcrImageProcessor:
    """The native image processor configured as the official scripts configure each mode."""
    spec = MODES[mode]
    return UnlimitedOcrImageProcessor(
        size={"height": spec.base_size, "width": spec.base_size},
        crop_to_patches=spec.crop,
        tile_size=spec.image_size,
        min_patches=MIN_TILES,
        max_patches=MAX_TILES,
        maximum_pad_value=SPEC.processor.maximum_pad_value,
        background_color=list(SPEC.processor.background_color),
    )


# One image's token layout (placeholder count and what RTPrune's layout needs): the spec's class.
ImageGeometry = ImageLayout


def placeholder_count(spec: ModeSpec, tiles_cols: int = 0, tiles_rows: int = 0) -> int:
    """`q(q+1) + 1`, plus `(rows·q_l)(cols·q_l + 1)` when tiled: 73/111/273/421, Gundam formula."""
    return geometry_for(spec, tiles_cols, tiles_rows).placeholders


def geometry_for(spec: ModeSpec, tiles_cols: int = 0, tiles_rows: int = 0) -> ImageGeometry:
    """A page's token layout from its mode and tile grid (the model spec's `layout_for`)."""
    return layout_for(spec, tiles_cols, tiles_rows)


def normalize_page(image: Image.Image) -> Image.Image:
    """EXIF transpose and RGB, as the official `load_image` does."""
    image = ImageOps.exif_transpose(image) or image
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class VisionBatch:
    """Processor output for a batch of pages plus each page's token geometry."""

    pixel_values: torch.Tensor
    pixel_values_local: torch.Tensor | None
    num_local_patches: list[int]
    patches_grid: list[list[int]]
    geometry: list[ImageGeometry]

    def to(self, device: torch.device, dtype: torch.dtype) -> "VisionBatch":
        """Float tensors to the model's dtype: a bf16 model rejects fp32 pixels (doc §8)."""
        local = self.pixel_values_local
        return VisionBatch(
            pixel_values=self.pixel_values.to(device=device, dtype=dtype),
            pixel_values_local=None if local is None else local.to(device=device, dtype=dtype),
            num_local_patches=self.num_local_patches,
            patches_grid=self.patches_grid,
            geometry=self.geometry,
        )

    def encoder_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"pixel_values": self.pixel_values}
        if self.pixel_values_local is not None:
            kwargs.update(
                pixel_values_local=self.pixel_values_local,
                num_local_patches=self.num_local_patches,
                patches_grid=self.patches_grid,
            )
        return kwargs


def preprocess(images: list[Image.Image], mode: str, processor: UnlimitedOcrImageProcessor) -> VisionBatch:
    """Run the native processor on a batch and record each page's tile grid."""
    spec = MODES[mode]
    pages = [normalize_page(image) for image in images]
    out = processor(images=pages, return_tensors="pt")
    geometry = [
        geometry_for(spec, cols, rows) if count else geometry_for(spec)
        for count, (cols, rows) in zip(out["num_local_patches"], out["patches_grid"])
    ]
    local = out.get("pixel_values_local")
    return VisionBatch(
        pixel_values=out["pixel_values"],
        pixel_values_local=local if local is not None and local.numel() else None,
        num_local_patches=list(out["num_local_patches"]),
        patches_grid=[list(g) for g in out["patches_grid"]],
        geometry=geometry,
    )


@dataclass(frozen=True)
class PromptParts:
    """Token ids around the image block: `prefix` starts with BOS."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    def ids(self, image_token_id: int, n_image: int) -> list[int]:
        return [*self.prefix, *([image_token_id] * n_image), *self.suffix]


def prompt_parts(tokenizer: PreTrainedTokenizerBase, prompt: str, bos_token_id: int) -> PromptParts:
    """Split the prompt at `<image>` and tokenize each side without special tokens."""
    before, after = prompt.split(SPEC.tokens.image, 1)
    encode = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()  # noqa: E731
    return PromptParts(prefix=(bos_token_id, *encode(before)), suffix=encode(after))
