"""The runtime contract: what the pipeline and `sweep` need from an engine.

Torch-free on purpose: the pipeline, the writers and the tests of the batch contract import this
module without loading a model. An engine (`hf`: transformers `generate`; `vllm`: vLLM decoding of
the same pruned prompts) takes page images and returns one `PageOutput` per page, in page order,
with a neutral stop status; everything else the pipeline calls on it is declared in `Backend` and
given a default in `BackendBase`, so nothing is reached by `getattr`. `sweep` needs more of an
engine (encode once, decode a subset at several keeps): `EncodingBackend`. An engine says what it
loaded (`LoadedInfo`); the run description (`RunInfo`) is built above it by `describe_run`, from
the settings and that record. The factory that opens an engine is `ocrprune.runtime.open_backend`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ocrprune import __version__
from ocrprune.config import keep_label
from ocrprune.records import KeepInfo, RunInfo, TokenCounts

if TYPE_CHECKING:
    from ocrprune.config import GenerationSettings, PruneConfig

log = logging.getLogger("ocrprune")

EngineName = Literal["hf", "vllm"]
ENGINES: tuple[str, ...] = ("hf", "vllm")
# How each engine numbers the prompt positions of a pruned page. `gapped`: kept tokens keep their
# original position ids (the RTPrune reference); `compact`: 0..n-1 over the pruned prompt, as vLLM
# numbers every prompt. Recorded in every document JSON and the run report.
POSITIONS: dict[str, str] = {"hf": "gapped", "vllm": "compact"}

# `ok`: end-of-sequence; `length`: the token or position cap; `timeout`: --page-timeout;
# `model_error`: the engine could not run this page (its `error` says why; the others go on).
StopStatus = Literal["ok", "length", "timeout", "model_error"]


@dataclass
class PageOutput:
    """What the model produced for one page; plain values apart from `token_ids`."""

    raw_text: str
    status: str  # a StopStatus
    token_ids: list[int]
    tokens: TokenCounts
    keep: KeepInfo
    preprocess_ms: float
    encode_ms: float
    prune_ms: float
    prefill_ms: float
    decode_ms: float
    error: str | None = None  # set with status `model_error`


@dataclass(frozen=True)
class LoadedInfo:
    """What an engine resolved when it loaded the model: the part of the run description only
    the loaded model knows (the rest comes from the settings, in `describe_run`)."""

    model: str  # the model id or folder as loaded
    revision: str | None
    device: str  # e.g. `cpu`, `cuda:0`
    dtype: str  # the label manifests record: `bf16`, `fp16`, `fp32`
    dummy: bool  # the built-in tiny-random model


@runtime_checkable
class Backend(Protocol):
    """Pages in, one `PageOutput` per page out (same order), plus what a batch run needs."""

    def run(self, images: list[Any]) -> list[PageOutput]: ...

    def recover(self) -> None:
        """After a failed batch (e.g. out of memory), release what it held before a retry."""
        ...

    def peak_gpu_mb(self) -> float | None:
        """Peak device memory of the run so far, for the report (None off CUDA)."""
        ...

    def batch_size_hint(self) -> int:
        """Pages per `run` call when `--batch-size` is not given."""
        ...

    def loaded_info(self) -> LoadedInfo:
        """What was loaded (model, revision, device, dtype), for the run description."""
        ...


@runtime_checkable
class EncodingBackend(Backend, Protocol):
    """A `Backend` that `ocrprune sweep` can drive: encode a batch once, then decode it (or some
    of its pages) at several keep settings. An encoded batch is the engine's own object."""

    def encode(self, images: list[Any]) -> Any:
        """Preprocess and run the vision encoder once for the batch."""
        ...

    def decode(self, encoded: Any, prune: PruneConfig | None = None) -> list[PageOutput]:
        """Prune (with `prune`, else the engine's own setting) and generate each page."""
        ...

    def select(self, encoded: Any, indices: list[int]) -> Any:
        """Pages `indices` of an encoded batch, to decode apart (the batch itself if all, in order)."""
        ...


class BackendBase:
    """Defaults for everything in `Backend` but `run`: nothing to recover, no GPU, one page per
    batch. Engines (and test engines) inherit it and override what they know better."""

    def run(self, images: list[Any]) -> list[PageOutput]:
        raise NotImplementedError

    def recover(self) -> None:
        return None

    def peak_gpu_mb(self) -> float | None:
        return None

    def batch_size_hint(self) -> int:
        return 1

    def loaded_info(self) -> LoadedInfo:
        raise NotImplementedError("this engine does not say what it loaded")


def describe_run(
    loaded: LoadedInfo, *, generation: GenerationSettings, prune: PruneConfig, engine: str
) -> RunInfo:
    """What produced the outputs, for every JSON document and the run report: the loaded model
    (or, before one is loaded, what the settings expect) plus the settings it ran with."""
    return RunInfo(
        model=loaded.model,
        revision=loaded.revision,
        mode=generation.mode,
        keep=keep_label(prune.keep),
        prune_method=prune.method,
        prompt=generation.prompt,
        device=loaded.device,
        dtype=loaded.dtype,
        dummy_model=loaded.dummy,
        version=__version__,
        engine=engine,
        positions=POSITIONS[engine],
    )


__all__ = [
    "ENGINES",
    "POSITIONS",
    "Backend",
    "BackendBase",
    "EncodingBackend",
    "LoadedInfo",
    "PageOutput",
    "describe_run",
]
