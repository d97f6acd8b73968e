"""The default batch size: from free device memory and the mode on CUDA, small on CPU."""

from __future__ import annotations

from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1

# Rough device memory per page by mode: the model spec's estimate (KV cache + vision activations).
_MEMORY = DEEPSEEK_OCR_V1.memory
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
    per_page = _MEMORY.page_bytes(mode, max_new_tokens)
    usable = free_bytes * 0.6
    return max(1, min(_MAX_AUTO_BATCH, int(usable // per_page)))
