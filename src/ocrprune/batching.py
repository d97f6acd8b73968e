"""Group pages into GPU batches and pick a default batch size. Pure: no I/O, no torch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Rough device memory one page needs while it decodes, by mode: the KV cache (60 KiB per token in
# bf16 for 12 layers x 2 x 1280) over prompt + a typical 2k-token output, plus vision activations.
_KV_BYTES_PER_TOKEN = 12 * 2 * 1280 * 2
_VISION_BYTES = {"tiny": 0.3e9, "small": 0.4e9, "base": 0.8e9, "large": 1.2e9, "gundam": 2.0e9}
_PROMPT_TOKENS = {"tiny": 90, "small": 130, "base": 290, "large": 440, "gundam": 1300}
_MAX_AUTO_BATCH = 32


def auto_batch_size(
    device_type: str,
    mode: str,
    free_bytes: int | None,
    max_new_tokens: int,
    tiny_model: bool = False,
) -> int:
    """A batch size that fits: from free GPU memory on CUDA; small on CPU where batching buys little.

    Batches that still run out of memory are split by the pipeline, so this only needs to be a
    sensible first guess.
    """
    if device_type != "cuda" or not free_bytes:
        return 4 if tiny_model else 1
    tokens = _PROMPT_TOKENS.get(mode, 1300) + min(max_new_tokens, 4096)
    per_page = _VISION_BYTES.get(mode, 2.0e9) / 4 + tokens * _KV_BYTES_PER_TOKEN * 2
    usable = free_bytes * 0.6
    return max(1, min(_MAX_AUTO_BATCH, int(usable // per_page)))


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of at most `size` items, in order."""
    if size < 1:
        raise ValueError("size must be at least 1")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """Split a batch in two (first half not smaller) to retry after running out of memory."""
    middle = (len(items) + 1) // 2
    return list(items[:middle]), list(items[middle:])
