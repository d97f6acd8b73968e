"""The `hf` engine as a `Backend`: the transformers runtime plus what a batch run asks of it.

`Engine` does the work (and keeps its numerics, and says what it loaded); this adds the batch-size
hint, which depends on the device's free memory.
"""

from __future__ import annotations

import logging

from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig
from ocrprune.runtime.hf.batch_size import auto_batch_size
from ocrprune.runtime.hf.engine import Engine
from ocrprune.runtime.hf.loading import load_model

log = logging.getLogger("ocrprune")


class HfBackend(Engine):
    """transformers `generate` with gapped positions (the RTPrune reference)."""

    def batch_size_hint(self) -> int:
        loaded = self.loaded
        return auto_batch_size(
            loaded.device.type,
            self.settings.mode,
            self.free_memory(),
            self.settings.max_new_tokens,
            loaded.dummy,
        )


def open_hf_backend(model: ModelConfig, generation: GenerationSettings, prune: PruneConfig) -> HfBackend:
    """Load the model `model` names and wrap it (imports torch and transformers)."""
    loaded = load_model(model)
    if loaded.dummy:
        log.warning(
            "using the tiny-random model: its text is meaningless (for tests and demos only)"
        )
    return HfBackend(loaded, generation, prune)
