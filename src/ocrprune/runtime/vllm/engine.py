"""The `vllm` engine: our vision encoder and RTPrune, then vLLM decodes the pruned prompts.

Per batch: preprocess, encode (SAM + CLIP + projector, once per page) and prune exactly as the `hf`
engine does (`Engine.encode`, `prune_pages`, `build_decoder_inputs`). Each page's prompt is then
turned into the full-length embeddings HF's model would see (token embeddings of the prompt text,
the kept image rows scattered over the image placeholders, as `UnlimitedOcrModel.forward` merges
`mm_encoder_outputs`) and all pages of the batch go to `vllm.LLM.generate` as `prompt_embeds`
requests at once, so vLLM's continuous batching and paged KV cache keep the GPU full.

Decoding matches the `hf` engine's: greedy, the windowed no-repeat n-gram rule (n=30, window 90,
`<td>`/`</td>` whitelisted; vLLM's own DeepSeek-OCR processor), stop at EOS, the same per-page token
cap. One difference: vLLM numbers prompt positions compactly (0..n-1 over the pruned prompt), where
the RTPrune reference keeps the kept tokens' original (gapped) positions. Runs record it
(`positions: compact`). `--page-timeout` is not enforced here (vLLM runs a batch to completion; the
token cap bounds it). Prefill and decode interleave inside vLLM, so a page's generation time is
reported as `decode` (its share of the batch's `generate` call) and `prefill` is 0.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig
from ocrprune.errors import DependencyError, UsageError
from ocrprune.runtime.api import BackendBase, LoadedInfo, PageOutput
from ocrprune.runtime.hf.engine import EncodedBatch, Engine, keep_info, token_counts
from ocrprune.runtime.hf.prune_hook import PrunedPage, build_decoder_inputs, prune_pages

log = logging.getLogger("ocrprune")

INSTALL_HINT = "pip install 'ocrprune[vllm]' (needs a CUDA GPU)"
# Share of GPU memory vLLM may take (weights + KV cache); the rest is left to our vision encoder.
DEFAULT_GPU_MEMORY = 0.75
# Pages encoded per vision-encoder pass: a vLLM batch is large, the encoder's activations are not.
ENCODE_CHUNK = 8


@dataclass
class PageRequest:
    """One page's vLLM request and what the result mapping needs to know about it."""

    index: int  # position in the batch
    prompt_embeds: torch.Tensor  # [pruned prompt length, hidden], on the CPU, model dtype
    max_tokens: int
    unpruned_length: int


class VllmEngine(BackendBase):
    """Encode and prune with the HF model (`hf`), decode with a vLLM `LLM` (`llm`).

    `sampling_params` builds vLLM's `SamplingParams`; `sampling_extra` is merged into its keyword
    arguments (the GPU benchmark sets `ignore_eos` to fix the tokens per page). Both `llm` and
    `sampling_params` are injected, so tests drive the engine with a fake `LLM`.
    """

    positions = "compact"

    def __init__(
        self,
        hf: Engine,
        llm: Any,
        sampling_params: Callable[..., Any],
        *,
        sampling_extra: dict[str, Any] | None = None,
        encode_chunk: int = ENCODE_CHUNK,
        batch_hint: int | None = None,
    ) -> None:
        self.hf = hf
        self.llm = llm
        self.sampling_params = sampling_params
        self.sampling_extra = dict(sampling_extra or {})
        self.encode_chunk = max(1, encode_chunk)
        self.batch_hint = batch_hint
        if hf.settings.page_timeout:
            log.warning(
                "--page-timeout is not enforced by the vllm engine; --max-new-tokens bounds each page"
            )

    # -- what the pipeline asks ------------------------------------------------------------------
    @property
    def loaded(self) -> Any:
        return self.hf.loaded

    def run(self, images: list[Image.Image]) -> list[PageOutput]:
        return self.decode(self.encode(images))

    def recover(self) -> None:
        self.hf.recover()

    def peak_gpu_mb(self) -> float | None:
        return self.hf.peak_gpu_mb()  # our process only: vLLM's engine core runs in its own

    def batch_size_hint(self) -> int:
        if self.batch_hint is not None:
            return self.batch_hint
        return 64 if self.hf.loaded.device.type == "cuda" else 4

    def loaded_info(self) -> LoadedInfo:
        return self.hf.loaded_info()  # our encoder side; vLLM runs the same folder and dtype

    # -- encode (shared with hf) and decode (vLLM) ---------------------------------------------
    def encode(self, images: list[Image.Image]) -> EncodedBatch:
        """The `hf` engine's encoder pass, in chunks of `encode_chunk` pages."""
        chunks = [
            self.hf.encode(images[i : i + self.encode_chunk])
            for i in range(0, len(images), self.encode_chunk)
        ]
        if len(chunks) == 1:
            return chunks[0]
        return _concat(chunks)

    def select(self, encoded: EncodedBatch, indices: list[int]) -> EncodedBatch:
        """Pages `indices` of an encoded batch, as the `hf` engine selects them."""
        return self.hf.select(encoded, indices)

    @torch.inference_mode()
    def build_requests(
        self, encoded: EncodedBatch, prune: PruneConfig
    ) -> tuple[list[PrunedPage], list[PageRequest], dict[int, str]]:
        """Prune each page and build its request; a page that cannot run gets an error message."""
        hf, loaded = self.hf, self.hf.loaded
        pages = prune_pages(
            encoded.features, encoded.vision.geometry, encoded.vision.pixel_values, prune, hf.clock
        )
        block_lengths = [int(f.shape[0]) for f in encoded.features]
        inputs = build_decoder_inputs(
            hf.parts,
            pages,
            block_lengths,
            loaded.image_token_id,
            loaded.pad_token_id,
            loaded.device,
        )
        rows = prompt_embeddings(
            loaded.model, inputs.input_ids, inputs.attention_mask, pages, loaded.image_token_id
        )
        limit = min(hf.settings.max_positions, loaded.max_positions)
        requests, errors = [], {}
        for i, (row, unpruned) in enumerate(zip(rows, inputs.unpruned_lengths)):
            budget = max(0, min(hf.settings.max_new_tokens, limit - unpruned))
            if budget == 0:
                errors[i] = f"prompt of {unpruned} tokens leaves no room in {limit} positions"
                continue
            requests.append(PageRequest(i, row.cpu(), budget, unpruned))
        return pages, requests, errors

    def sampling_for(self, request: PageRequest) -> Any:
        """Greedy, the windowed n-gram rule, EOS stop, the page's token cap."""
        settings = self.hf.settings
        kwargs: dict[str, Any] = {
            "temperature": 0.0,
            "max_tokens": request.max_tokens,
            "stop_token_ids": [self.hf.loaded.eos_token_id],
            "skip_special_tokens": False,
            "detokenize": False,  # we decode with our tokenizer, as the hf engine does
            "extra_args": {
                "ngram_size": settings.ngram_size,
                "window_size": settings.ngram_window,
                "whitelist_token_ids": list(self.hf.whitelist),
            },
        }
        kwargs.update(self.sampling_extra)
        return self.sampling_params(**kwargs)

    def decode(self, encoded: EncodedBatch, prune: PruneConfig | None = None) -> list[PageOutput]:
        """Submit every runnable page of the batch to vLLM in one call; map results in page order."""
        prune = prune or self.hf.prune
        count = len(encoded.features)
        pages, requests, errors = self.build_requests(encoded, prune)
        results: list[Any] = []
        wall_ms = 0.0
        if requests:
            start = time.perf_counter()
            results = list(
                self.llm.generate(
                    [{"prompt_embeds": r.prompt_embeds} for r in requests],
                    [self.sampling_for(r) for r in requests],
                    use_tqdm=False,
                )
            )
            wall_ms = (time.perf_counter() - start) * 1000.0
            if len(results) != len(requests):
                raise RuntimeError(
                    f"vLLM returned {len(results)} results for {len(requests)} requests"
                )
        by_index = {r.index: (r, out) for r, out in zip(requests, results)}
        outputs = []
        for i, page in enumerate(pages):
            common: dict[str, Any] = {
                "keep": keep_info(page.record, prune),
                "preprocess_ms": encoded.preprocess_ms / count,
                "encode_ms": encoded.encode_ms / count,
                "prune_ms": page.prune_ms,
                "prefill_ms": 0.0,
            }
            block = int(encoded.features[i].shape[0])
            prefix, suffix = len(self.hf.parts.prefix), len(self.hf.parts.suffix)
            pruned_len = prefix + int(page.positions.numel()) + suffix
            unpruned_len = prefix + block + suffix
            if i in errors:
                outputs.append(
                    PageOutput(
                        raw_text="",
                        status="model_error",
                        token_ids=[],
                        tokens=token_counts(page.record, unpruned_len, pruned_len, 0),
                        decode_ms=0.0,
                        error=errors[i],
                        **common,
                    )
                )
                continue
            _request, result = by_index[i]
            status, ids, error = self.map_result(result)
            outputs.append(
                PageOutput(
                    raw_text=self.hf.decode_text(ids),
                    status=status,
                    token_ids=ids,
                    tokens=token_counts(page.record, unpruned_len, pruned_len, len(ids)),
                    decode_ms=wall_ms / len(requests),
                    error=error,
                    **common,
                )
            )
        return outputs

    def map_result(self, result: Any) -> tuple[str, list[int], str | None]:
        """vLLM's finish reason to our status: `stop` -> ok (ids end with EOS, as hf's do),
        `length` -> length; anything else (aborted, failed) -> model_error for this page."""
        completion = result.outputs[0] if result.outputs else None
        if completion is None:
            return "model_error", [], "vLLM returned no completion"
        ids = [int(t) for t in completion.token_ids]
        eos = self.hf.loaded.eos_token_id
        if completion.finish_reason == "stop":
            if eos in ids:
                ids = ids[: ids.index(eos) + 1]
            else:
                ids.append(eos)  # stopped at EOS without reporting it: the hf engine keeps it
            return "ok", ids, None
        if completion.finish_reason == "length":
            return "length", ids, None
        return "model_error", ids, f"vLLM finished the request with {completion.finish_reason!r}"


@torch.inference_mode()
def prompt_embeddings(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pages: Sequence[PrunedPage],
    image_token_id: int,
) -> list[torch.Tensor]:
    """Each row's prompt as HF's model embeds it: token embeddings with the kept image rows
    scattered over the image placeholders (the same `masked_scatter` `UnlimitedOcrModel.forward`
    does with `mm_encoder_outputs`), left padding dropped. One `[length, hidden]` tensor per row."""
    embeds = model.get_input_embeddings()(input_ids)
    features = torch.cat([p.embeddings for p in pages], dim=0).to(embeds.device, embeds.dtype)
    mask = (input_ids == image_token_id).unsqueeze(-1)
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"{int(mask.sum())} image placeholders for {features.shape[0]} image rows")
    embeds = embeds.masked_scatter(mask.to(embeds.device), features)
    return [embeds[i, attention_mask[i].bool()] for i in range(embeds.shape[0])]


def _concat(chunks: list[EncodedBatch]) -> EncodedBatch:
    """Several encoder passes as one batch (decode reads the global views, not the local tiles)."""
    from ocrprune.runtime.hf.preprocess import VisionBatch

    vision = VisionBatch(
        pixel_values=torch.cat([c.vision.pixel_values for c in chunks], dim=0),
        pixel_values_local=None,
        num_local_patches=[n for c in chunks for n in c.vision.num_local_patches],
        patches_grid=[g for c in chunks for g in c.vision.patches_grid],
        geometry=[g for c in chunks for g in c.vision.geometry],
    )
    return EncodedBatch(
        vision,
        [f for c in chunks for f in c.features],
        sum(c.preprocess_ms for c in chunks),
        sum(c.encode_ms for c in chunks),
    )


def import_vllm() -> Any:
    """The `vllm` module, or one clear line (exit 5) when it is not installed."""
    try:
        import vllm
    except ImportError as exc:
        raise DependencyError(
            f"--engine vllm needs vLLM, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return vllm


def ngram_processor() -> Any:
    """vLLM's per-request windowed no-repeat n-gram processor for DeepSeek-OCR (reads `extra_args`)."""
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor

    return NGramPerReqLogitsProcessor


def open_vllm_backend(
    model: ModelConfig, generation: GenerationSettings, prune: PruneConfig
) -> VllmEngine:
    """Check vLLM is importable, start it on the model folder, then load our encoder side."""
    vllm = import_vllm()
    if model.is_tiny_random:
        raise UsageError(
            "--engine vllm needs a model folder or hub id; tiny-random exists only in memory"
        )
    from ocrprune.runtime.hf.loading import load_model, resolve_model_dir, verify_model_folder

    folder, revision = resolve_model_dir(model.model, model.revision)
    verify_model_folder(folder)  # a damaged folder is refused before vLLM starts on it
    limit = generation.max_positions
    dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(model.dtype, "auto")
    utilization = float(os.environ.get("OCRPRUNE_VLLM_GPU_MEMORY", DEFAULT_GPU_MEMORY))
    # vLLM first: it sizes its KV cache from the memory free at start, and our encoder needs less.
    llm = vllm.LLM(
        model=str(folder),
        tokenizer=str(folder),
        dtype=dtype,
        seed=model.seed,
        max_model_len=limit,
        enable_prompt_embeds=True,
        enable_prefix_caching=False,  # pages share no prefix
        limit_mm_per_prompt={"image": 0},  # images never reach vLLM: we send embeddings
        logits_processors=[ngram_processor()],
        gpu_memory_utilization=utilization,
    )
    loaded = load_model(model)
    drop_decoder_layers(loaded.model)
    hf = Engine(loaded, generation, prune)
    log.info(
        "vLLM %s decodes; vision encoder and RTPrune on %s (revision %s)",
        vllm.__version__,
        loaded.device,
        revision,
    )
    return VllmEngine(hf, llm, vllm.SamplingParams)


def drop_decoder_layers(model: Any) -> None:
    """Free our copy of the decoder's layers: vLLM holds its own, and we only need the token
    embeddings (for the prompt) and the vision side."""
    model.model.language_model.layers = torch.nn.ModuleList()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
