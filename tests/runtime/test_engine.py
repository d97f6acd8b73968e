"""The engine on the tiny random model: batched == single, keep=1 exactness, gapped positions,
one vision pass per page, and the position budget."""

from __future__ import annotations

import pytest
import torch
from conftest import draw_page
from transformers import GenerationConfig, LogitsProcessorList

from ocrprune.config import GenerationSettings, PruneConfig
from ocrprune.runtime.hf.engine import Engine
from ocrprune.runtime.hf.generation import WindowedNoRepeatNGram
from ocrprune.runtime.hf.preprocess import image_processor_for, preprocess

PAGES = {
    "tiny": [draw_page((620, 877), seed=1), draw_page((900, 500), seed=2)],
    "base": [draw_page((620, 877), seed=3), draw_page((400, 400), seed=4)],
    "gundam": [draw_page((1240, 1754), seed=5), draw_page((500, 450), seed=6), draw_page((1500, 800), seed=7)],
}


def engine(loaded, mode: str, keep, tokens: int = 12, **settings) -> Engine:
    return Engine(loaded, GenerationSettings(mode=mode, max_new_tokens=tokens, **settings), PruneConfig(keep=keep))


def unpruned_reference(loaded, mode: str, images, tokens: int = 12) -> list[list[int]]:
    """The plain path: processor output straight into `generate`, the model encodes internally."""
    eng = engine(loaded, mode, 1.0, tokens)
    vision = preprocess(images, mode, image_processor_for(mode))
    rows = [eng.parts.ids(loaded.image_token_id, g.placeholders) for g in vision.geometry]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), loaded.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    config = GenerationConfig(do_sample=False, max_new_tokens=tokens, eos_token_id=1, pad_token_id=loaded.pad_token_id)
    out = loaded.model.generate(
        input_ids=ids,
        attention_mask=mask,
        generation_config=config,
        logits_processor=LogitsProcessorList([WindowedNoRepeatNGram(30, 90, width, eng.whitelist)]),
        **vision.encoder_kwargs(),
    )
    results = []
    for row in out[:, width:].tolist():
        results.append(row[: row.index(1) + 1] if 1 in row else [t for t in row if t != loaded.pad_token_id])
    return results


@pytest.mark.parametrize("mode", ["tiny", "base", "gundam"])
def test_keep_one_is_token_identical_to_the_unpruned_path(tiny_loaded, mode):
    images = PAGES[mode]
    ours = [o.token_ids for o in engine(tiny_loaded, mode, 1.0).run(images)]
    assert ours == unpruned_reference(tiny_loaded, mode, images)
    assert all(len(ids) > 1 for ids in ours)


@pytest.mark.parametrize("keep", [0.4, "auto"])
def test_batched_pages_equal_each_page_alone_with_pruning(tiny_loaded, keep):
    eng = engine(tiny_loaded, "gundam", keep)
    batched = eng.run(PAGES["gundam"])
    alone = [eng.run([page])[0] for page in PAGES["gundam"]]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert [o.tokens for o in batched] == [o.tokens for o in alone]
    kept = [o.tokens.visual_kept for o in batched]
    assert len(set(kept)) > 1  # pages of different sizes: rows of different lengths in one batch


def test_pruning_changes_the_prompt_but_keeps_the_report_consistent(tiny_loaded):
    eng = engine(tiny_loaded, "gundam", 0.4)
    out = eng.run(PAGES["gundam"][:1])[0]
    t = out.tokens
    assert (t.visual_total, t.visual_kept) == (856, 342)  # 600 local + 256 global; floor(856 * 0.4)
    assert t.layout_total == 47  # 30 + 16 newlines + separator
    assert t.prompt_unpruned == len(eng.parts.prefix) + 903 + len(eng.parts.suffix)
    assert t.prompt == t.prompt_unpruned - (t.visual_total - t.visual_kept) - t.newlines_collapsed
    assert out.keep.setting == "0.4" and out.keep.ratio == 0.4 and out.keep.r_txt is None


def test_decoding_continues_from_the_unpruned_length_with_gapped_prefill_positions(tiny_loaded):
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        seen.append(kwargs["position_ids"].clone())

    handle = tiny_loaded.model.model.language_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = engine(tiny_loaded, "base", 0.4, tokens=3).run(PAGES["base"][:1])[0]
    finally:
        handle.remove()
    prefill, first_step = seen[0][0], seen[1][0]
    assert prefill.numel() == out.tokens.prompt
    assert (prefill[1:] > prefill[:-1]).all()
    assert int(prefill[-1]) == out.tokens.prompt_unpruned - 1  # the text keeps its original positions
    assert int(prefill.diff().max()) > 1  # gaps where tokens were pruned
    assert first_step.tolist() == [out.tokens.prompt_unpruned]


def test_the_vision_encoder_runs_once_per_batch_and_never_while_decoding(tiny_loaded, monkeypatch):
    calls = []
    vision = tiny_loaded.model.model.vision_tower
    handle = vision.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        engine(tiny_loaded, "gundam", 0.4, tokens=8).run(PAGES["gundam"])
    finally:
        handle.remove()
    assert calls == [3, 6 + 0 + 2]  # one pass over the 3 global views, one over all tiles (2x3, none, 2x1)


def test_generation_is_capped_so_prompt_plus_new_tokens_fit_the_positions(tiny_loaded):
    page = PAGES["tiny"][:1]
    unpruned = engine(tiny_loaded, "tiny", 1.0).run(page)[0].tokens.prompt_unpruned
    capped = engine(tiny_loaded, "tiny", 0.4, tokens=50, max_positions=unpruned + 2).run(page)[0]
    assert capped.tokens.generated <= 2
    if 1 not in capped.token_ids:
        assert capped.status == "length"  # capped without end-of-sequence (the pipeline tells loops apart)


def test_tiny_model_output_is_not_degenerate(tiny_loaded):
    outs = engine(tiny_loaded, "tiny", 1.0, tokens=20).run(PAGES["tiny"] + PAGES["base"])
    tokens = {t for o in outs for t in o.token_ids}
    assert len(tokens) > 5
    assert len({tuple(o.token_ids) for o in outs}) > 1


def test_pages_still_generating_at_the_deadline_time_out(tiny_loaded):
    outs = engine(tiny_loaded, "tiny", 1.0, tokens=400, page_timeout=1e-9).run(PAGES["tiny"])
    assert [o.status for o in outs] == ["timeout", "timeout"]
    assert all(1 <= o.tokens.generated < 400 for o in outs)


def test_select_decodes_a_subset_of_an_encoded_batch_as_that_page_alone(tiny_loaded):
    """`select` (what sweep uses to decode pages apart) keeps each chosen page's features and
    global view, shares the batch's encode time pro rata, and returns the batch itself when all."""
    eng = engine(tiny_loaded, "tiny", 0.4)
    encoded = eng.encode(PAGES["tiny"])
    assert eng.select(encoded, [0, 1]) is encoded
    second = eng.select(encoded, [1])
    assert len(second.features) == 1 and second.features[0] is encoded.features[1]
    assert torch.equal(second.vision.pixel_values, encoded.vision.pixel_values[[1]])
    assert second.vision.geometry == [encoded.vision.geometry[1]]
    assert second.encode_ms == pytest.approx(encoded.encode_ms / 2)
    alone = eng.decode(eng.encode(PAGES["tiny"][1:]))
    assert [o.token_ids for o in eng.decode(second)] == [o.token_ids for o in alone]
