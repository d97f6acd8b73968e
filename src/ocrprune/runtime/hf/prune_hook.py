"""The one place where RTPrune meets the model: between the vision encoder and the decoder.

Per page we prune the projected feature block, then rebuild the prompt with the pruned placeholder
count, left-padded across the batch, with the ORIGINAL (gapped) position ids of every kept token and
of the text after the image. `generate` then continues decode positions from each row's last
original position + 1, i.e. from the unpruned length, exactly as the reference does (spec §1.3-1.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ocrprune import rtprune
from ocrprune.config import PruneConfig
from ocrprune.runtime.hf.clock import StageClock
from ocrprune.runtime.hf.preprocess import ImageGeometry, PromptParts


@dataclass
class PrunedPage:
    """One page's pruned block and what pruning did, with its own prune time."""

    embeddings: torch.Tensor  # [L', D]
    positions: torch.Tensor  # [L'] indices into the unpruned block, ascending
    record: rtprune.PruneRecord
    prune_ms: float


def prune_pages(
    features: list[torch.Tensor],
    geometry: list[ImageGeometry],
    global_views: torch.Tensor,
    prune: PruneConfig,
    clock: StageClock,
) -> list[PrunedPage]:
    """Prune each page's `[L, D]` features; `global_views` is `[B, 3, S, S]` (normalised)."""
    pages = []
    for index, (feats, geo) in enumerate(zip(features, geometry)):
        layout = geo.token_layout()  # the model spec builds the plain layout rtprune prunes by
        generator = None
        if prune.method == "random":
            generator = torch.Generator(device=feats.device).manual_seed(prune.seed)
        start = clock.mark()
        result = rtprune.prune_image(
            feats,
            layout,
            prune.keep,
            global_view=global_views[index] if prune.keep == "auto" else None,
            method=prune.method,
            generator=generator,
        )
        end = clock.mark()
        pages.append(PrunedPage(result.embeddings, result.positions, result.record, clock.elapsed_ms(start, end)))
    return pages


@dataclass
class DecoderInputs:
    """Left-padded prompt tensors for `generate`, plus per-row lengths for the report."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    unpruned_lengths: list[int]
    pruned_lengths: list[int]


def build_decoder_inputs(
    parts: PromptParts,
    pages: list[PrunedPage],
    block_lengths: list[int],
    image_token_id: int,
    pad_token_id: int,
    device: torch.device,
) -> DecoderInputs:
    """Rows `[pad…][prefix][kept image tokens][suffix]`; pads get position 0 and mask 0."""
    prefix, suffix = len(parts.prefix), len(parts.suffix)
    rows, positions = [], []
    for page, block_len in zip(pages, block_lengths):
        rows.append(parts.ids(image_token_id, int(page.positions.numel())))
        positions.append(rtprune.gapped_positions(prefix, page.positions.cpu(), suffix, block_len))
    width = max(len(row) for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    for i, (row, pos) in enumerate(zip(rows, positions)):
        start = width - len(row)
        input_ids[i, start:] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, start:] = 1
        position_ids[i, start:] = pos.to(torch.long)
    return DecoderInputs(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        unpruned_lengths=[prefix + block + suffix for block in block_lengths],
        pruned_lengths=[len(row) for row in rows],
    )
