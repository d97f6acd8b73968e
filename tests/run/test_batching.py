"""Batch sizing and splitting (pure)."""

from __future__ import annotations

from ocrprune.run.batching import chunks, halves
from ocrprune.runtime.hf.batch_size import auto_batch_size


def test_cpu_batches_stay_small_and_tiny_model_batches_a_few():
    assert auto_batch_size("cpu", "gundam", None, 8192) == 1
    assert auto_batch_size("cpu", "gundam", None, 8192, tiny_model=True) == 4


def test_cuda_batch_grows_with_free_memory_and_shrinks_with_mode_size():
    gib = 2**30
    small = auto_batch_size("cuda", "gundam", 8 * gib, 8192)
    large = auto_batch_size("cuda", "gundam", 70 * gib, 8192)
    assert 1 <= small < large <= 32
    assert auto_batch_size("cuda", "tiny", 70 * gib, 8192) >= large
    assert auto_batch_size("cuda", "gundam", 1, 8192) == 1


def test_halves_and_chunks_keep_order():
    assert halves([1, 2, 3]) == ([1, 2], [3])
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
