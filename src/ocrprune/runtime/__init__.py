"""The model runtime: the factory that opens an engine. Torch-free: an engine (and torch, and vLLM)
is imported only when it is chosen, so `ocrprune --help` imports no torch.

The contract every engine keeps is `ocrprune.runtime.api`; `hf/` is the transformers engine (the
numerics reference), `vllm/` decodes the same pruned prompts with vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocrprune.config import RunConfig
from ocrprune.runtime.api import ENGINES, Backend, EngineName

if TYPE_CHECKING:
    from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig


def open_backend(config: RunConfig) -> Backend:
    """Load the model and build the engine `config.engine` names (imports torch, and vLLM only
    for `vllm`). Raises `DependencyError` (exit 5) when the engine's package is missing."""
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; choose from {', '.join(ENGINES)}")
    if config.engine == "vllm":
        from ocrprune.runtime.vllm.engine import open_vllm_backend

        return open_vllm_backend(config)
    from ocrprune.runtime.hf.backend import open_hf_backend

    return open_hf_backend(config)


def open_sweep_engine(
    engine: EngineName, model: ModelConfig, generation: GenerationSettings, prune: PruneConfig
) -> Any:
    """An engine with `encode`/`decode` for `ocrprune sweep` (one encoder pass, many keeps)."""
    # `out` is never written: only the model, engine and decoding settings are read.
    config = RunConfig(
        inputs=(), out=Path("."), model=model, prune=prune, generation=generation, engine=engine
    )
    return open_backend(config)
