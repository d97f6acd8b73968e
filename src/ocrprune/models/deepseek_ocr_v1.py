"""DeepSeek-OCR v1 as data: modes and token grids, prompts, special tokens, hub pin, memory guess.

Everything else (config, preprocessing, pruning layout, loading, the tiny model, batching) reads
these values, so a second model can be described by a second spec. Torch-free at import: the
config conversion and the tiny builder are named here and imported only when called.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# SAM patch size and the 4x token downsample: one visual token per 64x64 pixels.
PATCH = 16
DOWNSAMPLE = 4


def grid_side(size: int) -> int:
    """Side of a token grid for a `size`-pixel square view: ceil(size / 16 / 4). The one formula."""
    return math.ceil(size / (PATCH * DOWNSAMPLE))


@dataclass(frozen=True)
class ModeSpec:
    """One DeepSeek-OCR resolution mode (runtime doc §1.3)."""

    base_size: int
    image_size: int
    crop: bool

    @property
    def global_grid(self) -> int:
        """Side of the global token grid: ceil(size / 16 / 4)."""
        return grid_side(self.base_size)

    @property
    def tile_grid(self) -> int:
        """Side of one tile's token grid (Gundam's local view)."""
        return grid_side(self.image_size)


@dataclass(frozen=True)
class ImageLayout:
    """Token layout of one image block (the geometry of its placeholders).

    No-crop modes: `[g rows of (g tokens + NL)] [SEP]`. Gundam: the stitched local grid first
    (`local_rows` rows of `local_cols` tokens + NL), then the global grid, then SEP.
    `local_rows = 10 * tile_rows`, `local_cols = 10 * tile_cols`, both 0 without tiles.
    """

    global_grid: int
    local_rows: int = 0
    local_cols: int = 0

    def __post_init__(self) -> None:
        if self.global_grid < 1:
            raise ValueError(f"global_grid must be >= 1, got {self.global_grid}")
        rows, cols = self.local_rows, self.local_cols
        if rows < 0 or cols < 0 or (rows == 0) != (cols == 0):
            raise ValueError(
                f"local_rows and local_cols must both be 0 or both positive, got "
                f"{self.local_rows} x {self.local_cols}"
            )

    @property
    def local_length(self) -> int:
        """Tokens in the stitched local part, newlines included."""
        return self.local_rows * (self.local_cols + 1)

    @property
    def length(self) -> int:
        """L = local_rows (local_cols + 1) + g (g + 1) + 1."""
        g = self.global_grid
        return self.local_length + g * (g + 1) + 1

    @property
    def placeholders(self) -> int:
        """`<image>` placeholders in the prompt: one per token of the block (= `length`)."""
        return self.length

    def newline_positions(self) -> tuple[int, ...]:
        """Newline positions, ascending: the end of each local row, then of each global row."""
        g, cols = self.global_grid, self.local_cols
        local = tuple(row * (cols + 1) + cols for row in range(self.local_rows))
        glob = tuple(self.local_length + row * (g + 1) + g for row in range(g))
        return local + glob

    def separator_positions(self) -> tuple[int, ...]:
        """The view separator: the block's last token."""
        return (self.length - 1,)

    def token_layout(self) -> Any:
        """The plain layout RTPrune prunes by (`rtprune.TokenLayout`); imports torch lazily."""
        from ocrprune.rtprune import TokenLayout

        return TokenLayout(
            length=self.length,
            newlines=self.newline_positions(),
            separators=self.separator_positions(),
            density_grid=self.global_grid,
        )


@dataclass(frozen=True)
class SpecialTokens:
    """Token strings and the ids the real checkpoint gives them (fallbacks when a config lacks them)."""

    bos: str = "<｜begin▁of▁sentence｜>"
    eos: str = "<｜end▁of▁sentence｜>"
    pad: str = "<｜▁pad▁｜>"
    image: str = "<image>"
    bos_id: int = 0
    eos_id: int = 1
    pad_id: int = 2
    image_id: int = 128815
    # Table cells repeat legitimately: exempt from the no-repeat n-gram ban (runtime doc §1.7).
    ngram_whitelist: tuple[str, ...] = ("<td>", "</td>")
    # All special tokens, in the order of their real ids (0, 1, 2, then 128815...).
    all: tuple[str, ...] = (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜▁pad▁｜>",
        "<image>",
        "<|ref|>",
        "<|/ref|>",
        "<|det|>",
        "<|/det|>",
        "<|grounding|>",
        "<td>",
        "</td>",
        "<tr>",
        "</tr>",
        "<|User|>",
        "<|Assistant|>",
        "[UNK]",
    )


@dataclass(frozen=True)
class ProcessorSettings:
    """How the official scripts configure the image processor (tiles, padding)."""

    min_tiles: int = 2
    max_tiles: int = 9
    maximum_pad_value: int = 640
    background_color: tuple[int, int, int] = (127, 127, 127)


@dataclass(frozen=True)
class MemoryEstimate:
    """Rough device memory one page needs while it decodes, by mode: the KV cache (60 KiB per token
    in bf16 for 12 layers x 2 x 1280) over prompt + a typical output, plus vision activations."""

    kv_bytes_per_token: int = 12 * 2 * 1280 * 2
    vision_bytes: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(
            {"tiny": 0.3e9, "small": 0.4e9, "base": 0.8e9, "large": 1.2e9, "gundam": 2.0e9}
        )
    )
    prompt_tokens: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(
            {"tiny": 90, "small": 130, "base": 290, "large": 440, "gundam": 1300}
        )
    )
    default_vision_bytes: float = 2.0e9
    default_prompt_tokens: int = 1300
    output_tokens_cap: int = 4096

    def page_bytes(self, mode: str, max_new_tokens: int) -> float:
        """Bytes one page of `mode` needs while decoding up to `max_new_tokens` (a first guess)."""
        tokens = self.prompt_tokens.get(mode, self.default_prompt_tokens) + min(
            max_new_tokens, self.output_tokens_cap
        )
        vision = self.vision_bytes.get(mode, self.default_vision_bytes)
        return vision / 4 + tokens * self.kv_bytes_per_token * 2


def _resolve(target: str) -> Callable[..., Any]:
    """`"package.module:name"` -> the callable, imported now (keeps this module torch-free)."""
    module, name = target.split(":", 1)
    return getattr(importlib.import_module(module), name)


def _no_names() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runtime knows about one model family."""

    name: str
    hub_id: str
    revision: str
    modes: Mapping[str, ModeSpec]
    prompts: Mapping[str, str]
    tokens: SpecialTokens
    processor: ProcessorSettings
    memory: MemoryEstimate
    max_positions: int
    config_converter: str  # "module:function": official/native config.json dict -> native config
    tiny_builder: str  # "module:function": seed -> (tiny random model, tokenizer)
    # Strict loading (runtime/checkpoint.py): official checkpoint tensors the model does not use,
    # and buffers the model computes at init instead of loading; each name -> why.
    unused_checkpoint_tensors: Mapping[str, str] = field(default_factory=_no_names)
    derived_buffers: Mapping[str, str] = field(default_factory=_no_names)

    def layout(self, mode: str, tiles_cols: int = 0, tiles_rows: int = 0) -> ImageLayout:
        """A page's token layout from its mode and tile grid (Gundam: `tiles_cols x tiles_rows`)."""
        spec = self.modes[mode]
        return layout_for(spec, tiles_cols, tiles_rows)

    def placeholder_count(self, mode: str, tiles_cols: int = 0, tiles_rows: int = 0) -> int:
        """`<image>` placeholders for one page: 73/111/273/421, Gundam adds its local grid."""
        return self.layout(mode, tiles_cols, tiles_rows).placeholders

    def convert_config(self, raw: dict[str, Any], image_token_id: int | None = None) -> Any:
        """The official `config.json` dict as the native transformers config (imports torch)."""
        image_id = self.tokens.image_id if image_token_id is None else image_token_id
        return _resolve(self.config_converter)(raw, image_id)

    def build_tiny(self, seed: int = 0) -> Any:
        """A tiny random model of this architecture and its tokenizer (imports torch)."""
        return _resolve(self.tiny_builder)(seed)


def layout_for(spec: ModeSpec, tiles_cols: int = 0, tiles_rows: int = 0) -> ImageLayout:
    """The layout for a mode spec and tile grid; untiled pages have only the global grid."""
    if tiles_cols and tiles_rows:
        return ImageLayout(spec.global_grid, tiles_rows * spec.tile_grid, tiles_cols * spec.tile_grid)
    return ImageLayout(spec.global_grid, 0, 0)


DEEPSEEK_OCR_V1 = ModelSpec(
    name="deepseek-ocr-v1",
    hub_id="deepseek-ai/DeepSeek-OCR",
    # The commit we pin when loading by hub id (users can override with --revision). Pinning
    # matters: remote-code revisions in user reports differ.
    revision="9f30c71f441d010e5429c532364a86705536c53a",
    modes=MappingProxyType(
        {
            "tiny": ModeSpec(512, 512, False),
            "small": ModeSpec(640, 640, False),
            "base": ModeSpec(1024, 1024, False),
            "large": ModeSpec(1280, 1280, False),
            "gundam": ModeSpec(1024, 640, True),
        }
    ),
    prompts=MappingProxyType(
        {
            "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
            "ocr": "<image>\n<|grounding|>OCR this image.",
            "free": "<image>\nFree OCR.",
            "figure": "<image>\nParse the figure.",
            "describe": "<image>\nDescribe this image in detail.",
        }
    ),
    tokens=SpecialTokens(),
    processor=ProcessorSettings(),
    memory=MemoryEstimate(),
    max_positions=8192,
    config_converter="ocrprune.runtime.hf.loading:native_config",
    tiny_builder="ocrprune.runtime.hf.tiny:build_tiny_random",
    unused_checkpoint_tensors=MappingProxyType(
        {
            # CLIP's own patch convolution: DeepSeek-OCR feeds CLIP the SAM features instead of
            # pixels, so the official checkpoint carries this tensor unused (runtime doc §1.9).
            "model.vision_model.embeddings.patch_embedding.weight": "CLIP patch conv, fed SAM instead",
        }
    ),
    derived_buffers=MappingProxyType(
        {
            # Non-persistent buffers transformers computes at init: never in a checkpoint.
            "model.vision_tower.vision_encoder.embeddings.position_ids": "arange(257), CLIP positions",
            "model.language_model.rotary_emb.inv_freq": "rope frequencies from theta and head size",
            "model.language_model.rotary_emb.original_inv_freq": "inv_freq's copy for dynamic rope",
        }
    ),
)
