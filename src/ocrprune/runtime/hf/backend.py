"""The `hf` engine as a `Backend`: the transformers runtime plus what a batch run asks of it.

`Engine` does the work (and keeps its numerics); this adds the run description and the batch-size
hint, which need the whole `RunConfig`.
"""

from __future__ import annotations

import logging
from typing import Any

from ocrprune.config import RunConfig
from ocrprune.records import RunInfo
from ocrprune.runtime.api import describe_run
from ocrprune.runtime.hf.batch_size import auto_batch_size
from ocrprune.runtime.hf.engine import Engine
from ocrprune.runtime.hf.loading import LoadedModel, dtype_label, load_model

log = logging.getLogger("ocrprune")


def run_info_for(config: RunConfig, loaded: Any) -> RunInfo:
    """The run description once the model is loaded (its resolved device, dtype and revision)."""
    return describe_run(
        config,
        model=loaded.model_id,
        revision=loaded.revision,
        device=str(loaded.device),
        dtype=dtype_label(loaded.dtype),
        dummy=loaded.dummy,
    )


class HfBackend(Engine):
    """transformers `generate` with gapped positions (the RTPrune reference)."""

    def __init__(self, loaded: LoadedModel, config: RunConfig) -> None:
        super().__init__(loaded, config.generation, config.prune)
        self.config = config

    def batch_size_hint(self) -> int:
        loaded = self.loaded
        return auto_batch_size(
            loaded.device.type,
            self.settings.mode,
            self.free_memory(),
            self.settings.max_new_tokens,
            loaded.dummy,
        )

    def run_info(self) -> RunInfo:
        return run_info_for(self.config, self.loaded)


def open_hf_backend(config: RunConfig) -> HfBackend:
    """Load the model named by `config` and wrap it (imports torch and transformers)."""
    loaded = load_model(config.model)
    if loaded.dummy:
        log.warning(
            "using the tiny-random model: its text is meaningless (for tests and demos only)"
        )
    return HfBackend(loaded, config)
