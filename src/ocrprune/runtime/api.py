"""The runtime contract: what the pipeline and `sweep` need from an engine.

Torch-free on purpose: the pipeline, the writers and the tests of the batch contract import this
module without loading a model. An engine (`hf`: transformers `generate`; `vllm`: vLLM decoding of
the same pruned prompts) takes page images and returns one `PageOutput` per page, in page order,
with a neutral stop status; everything else the pipeline calls on it is declared in `Backend` and
given a default in `BackendBase`, so nothing is reached by `getattr`. The factory that opens an
engine is `ocrprune.runtime.open_backend`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ocrprune import __version__
from ocrprune.config import RunConfig, keep_label
from ocrprune.records import KeepInfo, RunInfo, TokenCounts

if TYPE_CHECKING:
    pass

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

    def run_info(self) -> RunInfo:
        """What produced the outputs (model, revision, device, engine, positions, ...)."""
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

    def run_info(self) -> RunInfo:
        raise NotImplementedError("this engine does not describe its run")


def describe_run(
    config: RunConfig, *, model: str, revision: str | None, device: str, dtype: str, dummy: bool
) -> RunInfo:
    """What produced the outputs, for every JSON document and the run report."""
    return RunInfo(
        model=model,
        revision=revision,
        mode=config.generation.mode,
        keep=keep_label(config.prune.keep),
        prune_method=config.prune.method,
        prompt=config.generation.prompt,
        device=device,
        dtype=dtype,
        dummy_model=dummy,
        version=__version__,
        engine=config.engine,
        positions=POSITIONS[config.engine],
    )


__all__ = [
    "ENGINES",
    "POSITIONS",
    "Backend",
    "BackendBase",
    "PageOutput",
    "describe_run",
]
