"""Run one batch of pages: preprocess, vision encode, prune, prefill, decode.

The vision encoder runs once per page (we call it ourselves and hand its pruned output to
`generate` through `mm_encoder_outputs`), so no step of decoding re-runs it. `encode` and `decode`
are separate so that `ocrprune sweep` can encode a page once and decode it at several keep settings.
Stages shared by a batch (preprocess, encode, prefill, decode) are split evenly across its pages;
pruning is timed per page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ocrprune.config import GenerationSettings, PruneConfig, keep_label
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1
from ocrprune.records import KeepInfo, TokenCounts
from ocrprune.rtprune import PruneRecord
from ocrprune.runtime.api import BackendBase, LoadedInfo, PageOutput
from ocrprune.runtime.hf.clock import StageClock
from ocrprune.runtime.hf.generation import (
    Deadline,
    FirstStepClock,
    PositionBudget,
    WindowedNoRepeatNGram,
)
from ocrprune.runtime.hf.loading import LoadedModel, dtype_label
from ocrprune.runtime.hf.preprocess import (
    VisionBatch,
    image_processor_for,
    preprocess,
    prompt_parts,
)
from ocrprune.runtime.hf.prune_hook import build_decoder_inputs, prune_pages


@dataclass
class EncodedBatch:
    """Vision features of a batch, kept so several keep settings can reuse one encoder pass."""

    vision: VisionBatch
    features: list[torch.Tensor]
    preprocess_ms: float
    encode_ms: float

    def subset(self, indices: list[int]) -> EncodedBatch:
        """Pages `indices`, for decoding apart (decode reads no local pixels); the batch's
        preprocess and encode times are shared pro rata."""
        vision = self.vision
        count = len(self.features)
        subset = VisionBatch(
            pixel_values=vision.pixel_values[indices],
            pixel_values_local=None,
            num_local_patches=[vision.num_local_patches[i] for i in indices],
            patches_grid=[vision.patches_grid[i] for i in indices],
            geometry=[vision.geometry[i] for i in indices],
        )
        share = len(indices) / count
        return EncodedBatch(
            subset,
            [self.features[i] for i in indices],
            self.preprocess_ms * share,
            self.encode_ms * share,
        )


class Engine(BackendBase):
    """A loaded model plus the settings to run it; `run` turns page images into `PageOutput`s."""

    def __init__(self, loaded: LoadedModel, settings: GenerationSettings, prune: PruneConfig) -> None:
        self.loaded = loaded
        self.settings = settings
        self.prune = prune
        self.processor = image_processor_for(settings.mode)
        self.parts = prompt_parts(loaded.tokenizer, settings.prompt, loaded.bos_token_id)
        self.clock = StageClock(loaded.device)
        whitelist = loaded.tokenizer.convert_tokens_to_ids(list(DEEPSEEK_OCR_V1.tokens.ngram_whitelist))
        self.whitelist = [t for t in whitelist if isinstance(t, int) and t >= 0]

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> EncodedBatch:
        """Preprocess and run SAM + CLIP + projector once for the batch."""
        t0 = time.perf_counter()
        vision = preprocess(images, self.settings.mode, self.processor)
        vision = vision.to(self.loaded.device, self.loaded.dtype)
        t1 = time.perf_counter()
        start = self.clock.mark()
        output = self.loaded.model.model.get_image_features(**vision.encoder_kwargs(), return_dict=True)
        end = self.clock.mark()
        features = list(output.pooler_output)
        return EncodedBatch(vision, features, (t1 - t0) * 1000.0, self.clock.elapsed_ms(start, end))

    @torch.inference_mode()
    def decode(self, encoded: EncodedBatch, prune: PruneConfig | None = None) -> list[PageOutput]:
        """Prune each page, then generate the whole batch in one left-padded `generate` call."""
        prune = prune or self.prune
        loaded = self.loaded
        batch = len(encoded.features)
        pages = prune_pages(
            encoded.features, encoded.vision.geometry, encoded.vision.pixel_values, prune, self.clock
        )
        block_lengths = [int(f.shape[0]) for f in encoded.features]
        inputs = build_decoder_inputs(
            self.parts, pages, block_lengths, loaded.image_token_id, loaded.pad_token_id, loaded.device
        )
        width = inputs.input_ids.shape[1]
        limit = min(self.settings.max_positions, loaded.max_positions)
        budgets = [max(0, min(self.settings.max_new_tokens, limit - n)) for n in inputs.unpruned_lengths]
        if max(budgets) == 0:
            raise ValueError(f"prompt of {max(inputs.unpruned_lengths)} tokens leaves no room in {limit} positions")
        first_step = FirstStepClock(self.clock.mark)
        processors = LogitsProcessorList(
            [
                first_step,
                WindowedNoRepeatNGram(
                    self.settings.ngram_size, self.settings.ngram_window, width, self.whitelist
                ),
            ]
        )
        deadline = Deadline(self.settings.page_timeout) if self.settings.page_timeout else None
        criteria = StoppingCriteriaList([PositionBudget(budgets, width)] + ([deadline] if deadline else []))
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(budgets),
            eos_token_id=loaded.eos_token_id,
            pad_token_id=loaded.pad_token_id,
            bos_token_id=loaded.bos_token_id,
            use_cache=True,
        )
        pooled = BaseModelOutputWithPooling(pooler_output=[p.embeddings for p in pages])
        start = self.clock.mark()
        out = loaded.model.generate(
            input_ids=inputs.input_ids,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            mm_encoder_outputs={"image": pooled},
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=criteria,
        )
        end = self.clock.mark()
        first = first_step.first if first_step.first is not None else end
        prefill_ms = self.clock.elapsed_ms(start, first) / batch
        decode_ms = self.clock.elapsed_ms(first, end) / batch
        timed_out = bool(deadline and deadline.fired)
        results = []
        for i, page in enumerate(pages):
            ids = out[i, width:].tolist()
            if loaded.eos_token_id in ids:
                ids = ids[: ids.index(loaded.eos_token_id) + 1]
                status = "ok"
            else:
                ids = [t for t in ids if t != loaded.pad_token_id]
                status = "timeout" if timed_out and len(ids) < budgets[i] else "length"
            results.append(
                PageOutput(
                    raw_text=self.decode_text(ids),
                    status=status,
                    token_ids=ids,
                    tokens=token_counts(page.record, inputs.unpruned_lengths[i], inputs.pruned_lengths[i], len(ids)),
                    keep=keep_info(page.record, prune),
                    preprocess_ms=encoded.preprocess_ms / batch,
                    encode_ms=encoded.encode_ms / batch,
                    prune_ms=page.prune_ms,
                    prefill_ms=prefill_ms,
                    decode_ms=decode_ms,
                )
            )
        return results

    def run(self, images: list[Image.Image]) -> list[PageOutput]:
        return self.decode(self.encode(images))

    def select(self, encoded: EncodedBatch, indices: list[int]) -> EncodedBatch:
        """Pages `indices` of an encoded batch (the batch itself when that is all of it, in order)."""
        if indices == list(range(len(encoded.features))):
            return encoded
        return encoded.subset(indices)

    def loaded_info(self) -> LoadedInfo:
        """The model as loaded: its id, revision, resolved device and dtype."""
        loaded = self.loaded
        return LoadedInfo(
            model=loaded.model_id,
            revision=loaded.revision,
            device=str(loaded.device),
            dtype=dtype_label(loaded.dtype),
            dummy=loaded.dummy,
        )

    def free_memory(self) -> int | None:
        """Free device memory in bytes on CUDA (for the automatic batch size), else None."""
        if self.loaded.device.type != "cuda":
            return None
        free, _total = torch.cuda.mem_get_info(self.loaded.device)
        return int(free)

    def recover(self) -> None:
        """After a failed batch (e.g. out of memory), release cached blocks before retrying."""
        if self.loaded.device.type == "cuda":
            torch.cuda.empty_cache()

    def peak_gpu_mb(self) -> float | None:
        if self.loaded.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.loaded.device) / 2**20

    def decode_text(self, ids: list[int]) -> str:
        """Generated token ids to text, without EOS, padding or BOS (special tokens kept otherwise)."""
        drop = {self.loaded.eos_token_id, self.loaded.pad_token_id, self.loaded.bos_token_id}
        return self.loaded.tokenizer.decode([t for t in ids if t not in drop], skip_special_tokens=False)


def token_counts(record: PruneRecord, unpruned: int, pruned: int, generated: int) -> TokenCounts:
    """A page's token counts: what pruning did (`record`) and the prompt and output lengths."""
    return TokenCounts(
        visual_total=record.visual_total,
        visual_kept=record.visual_kept,
        layout_total=record.layout_total,
        layout_kept=record.layout_kept,
        newlines_collapsed=record.newlines_collapsed,
        prompt_unpruned=unpruned,
        prompt=pruned,
        generated=generated,
    )


def keep_info(record: PruneRecord, prune: PruneConfig) -> KeepInfo:
    """A page's keep setting and the ratio pruning applied (`r_txt`/`r_sim` only for `auto`)."""
    auto = prune.keep == "auto"
    return KeepInfo(
        setting=keep_label(prune.keep),
        ratio=float(record.ratio),
        method=prune.method,
        r_txt=float(record.r_txt) if auto and record.r_txt is not None else None,
        r_sim=float(record.r_sim) if auto and record.r_sim is not None else None,
    )


__all__ = ["Engine", "EncodedBatch", "PageOutput", "keep_info", "token_counts"]
