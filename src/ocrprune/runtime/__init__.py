"""The model runtime: the factory that opens an engine. Torch-free: an engine (and torch, and vLLM)
is imported only when it is chosen, so `ocrprune --help` imports no torch.

The contract every engine keeps is `ocrprune.runtime.api`; `hf/` is the transformers engine (the
numerics reference), `vllm/` decodes the same pruned prompts with vLLM. Engines are opened from the
model, generation and prune settings alone; the run description is built above them
(`api.describe_run`), from those settings and what the engine loaded (`Backend.loaded_info`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ocrprune.runtime.api import ENGINES, EncodingBackend, EngineName

if TYPE_CHECKING:
    from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig


def open_backend(
    engine: EngineName, model: ModelConfig, generation: GenerationSettings, prune: PruneConfig
) -> EncodingBackend:
    """Load the model and build the engine `engine` names (imports torch, and vLLM only for
    `vllm`). Raises `DependencyError` (exit 5) when the engine's package is missing."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if engine == "vllm":
        from ocrprune.runtime.vllm.engine import open_vllm_backend

        return open_vllm_backend(model, generation, prune)
    from ocrprune.runtime.hf.backend import open_hf_backend

    return open_hf_backend(model, generation, prune)


def resolve_device_dtype(model: ModelConfig) -> tuple[str, str]:
    """The device and the dtype label (`bf16`, `fp32`, ...) the model will run on, as manifests
    record them, without loading it (imports torch)."""
    from ocrprune.runtime.hf.loading import dtype_label, select_device, select_dtype

    device = select_device(model.device)
    return str(device), dtype_label(select_dtype(model.dtype, device))


__all__ = ["open_backend", "resolve_device_dtype"]
