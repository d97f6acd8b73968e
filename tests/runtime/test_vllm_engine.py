"""The `vllm` engine without vLLM: request building and result mapping against a fake `LLM`, and
the proof (on the tiny model, in HF) that the embeddings it sends are the prompt HF's model sees.

Real vLLM needs a CUDA build of torch and an older transformers, so CI never imports it: the fake
records exactly what the engine submits, and HF `generate` stands in for the decoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import draw_page
from transformers import GenerationConfig, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ocrprune.config import GenerationSettings, PruneConfig
from ocrprune.runtime.hf.engine import Engine
from ocrprune.runtime.hf.generation import WindowedNoRepeatNGram
from ocrprune.runtime.vllm.engine import VllmEngine

GUNDAM = [
    draw_page((1240, 1754), seed=5),
    draw_page((500, 450), seed=6),
    draw_page((1500, 800), seed=7),
]
TINY = [draw_page(seed=1), draw_page(seed=2), draw_page(seed=3)]


class FakeSampling:
    """Stands in for `vllm.SamplingParams`: keeps the keyword arguments it was built with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Stands in for `vllm.LLM`: records each `generate` call; `script(n, prompt, params)` gives
    request n's `(token_ids, finish_reason)`. Results come back in request order, as vLLM's do."""

    def __init__(self, script=None):
        self.script = script or (lambda n, prompt, params: ([40 + n, 41, 1], "stop"))
        self.calls: list[tuple[list, list, bool]] = []

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((prompts, params, use_tqdm))
        results = []
        for n, (prompt, sp) in enumerate(zip(prompts, params)):
            ids, reason = self.script(n, prompt, sp)
            results.append(
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason=reason)])
            )
        return results


def vllm_engine(loaded, mode="tiny", keep=0.5, tokens=12, llm=None, **settings):
    hf = Engine(
        loaded,
        GenerationSettings(mode=mode, max_new_tokens=tokens, **settings),
        PruneConfig(keep=keep),
    )
    return VllmEngine(hf, llm or FakeLLM(), FakeSampling)


def test_each_request_is_the_prompt_text_embeddings_around_the_kept_image_rows(tiny_loaded):
    engine = vllm_engine(tiny_loaded, keep=0.5)
    encoded = engine.encode(TINY[:2])
    pages, requests, errors = engine.build_requests(encoded, PruneConfig(keep=0.5))

    embed = tiny_loaded.model.get_input_embeddings()
    parts = engine.hf.parts
    prefix, suffix = len(parts.prefix), len(parts.suffix)
    assert errors == {} and [r.index for r in requests] == [0, 1]
    for request, page in zip(requests, pages):
        kept = int(page.positions.numel())
        # Tiny mode: 64 visual tokens + 8 newlines + 1 separator; keep 0.5 keeps 32 visual tokens.
        assert page.record.visual_kept == 32
        assert kept == page.record.visual_kept + page.record.layout_kept
        assert request.prompt_embeds.shape == (
            prefix + kept + suffix,
            tiny_loaded.model.config.text_config.hidden_size,
        )
        assert request.unpruned_length == prefix + 73 + suffix
        rows = request.prompt_embeds
        with torch.no_grad():
            assert torch.equal(rows[:prefix], embed(torch.tensor(parts.prefix)))
            assert torch.equal(rows[prefix + kept :], embed(torch.tensor(parts.suffix)))
        assert torch.equal(rows[prefix : prefix + kept], page.embeddings)
        assert (
            request.prompt_embeds.device.type == "cpu"
            and request.prompt_embeds.dtype == tiny_loaded.dtype
        )


def test_sampling_is_greedy_with_the_windowed_ngram_rule_eos_stop_and_the_page_cap(tiny_loaded):
    llm = FakeLLM()
    engine = vllm_engine(tiny_loaded, tokens=12, llm=llm)
    engine.run(TINY[:2])

    ((prompts, params, use_tqdm),) = llm.calls  # one call for the whole batch
    assert use_tqdm is False and len(prompts) == 2 and list(prompts[0]) == ["prompt_embeds"]
    assert [p.kwargs for p in params] == [
        {
            "temperature": 0.0,
            "max_tokens": 12,
            "stop_token_ids": [1],
            "skip_special_tokens": False,
            "detokenize": False,
            "extra_args": {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [9, 10]},
        }
    ] * 2


def test_finish_reasons_map_to_statuses_and_ids_end_at_eos_as_the_hf_engine_keeps_them(tiny_loaded):
    script = {
        0: ([5, 6, 1], "stop"),  # EOS reported
        1: ([7, 8], "stop"),  # EOS not reported: appended, as hf's ids end with it
        2: ([9, 1, 11], "stop"),  # anything after EOS is dropped
    }
    engine = vllm_engine(tiny_loaded, llm=FakeLLM(lambda n, p, s: script[n]))
    outputs = engine.run(TINY)
    assert [(o.status, o.token_ids, o.error) for o in outputs] == [
        ("ok", [5, 6, 1], None),
        ("ok", [7, 8, 1], None),
        ("ok", [9, 1], None),
    ]
    assert outputs[0].raw_text == engine.hf.decode_text([5, 6, 1])
    assert [o.tokens.generated for o in outputs] == [3, 3, 2]

    script = {0: ([4] * 12, "length"), 1: ([], "abort"), 2: ([3, 1], "stop")}
    outputs = vllm_engine(tiny_loaded, llm=FakeLLM(lambda n, p, s: script[n])).run(TINY)
    assert [(o.status, o.token_ids) for o in outputs] == [
        ("length", [4] * 12),
        ("model_error", []),
        ("ok", [3, 1]),
    ]
    assert outputs[1].error == "vLLM finished the request with 'abort'"


def test_pages_keep_their_order_and_a_page_that_cannot_run_fails_alone(tiny_loaded):
    # Gundam pages of different shapes have different prompt lengths: cap the positions so that
    # the longest page has no room to generate; it fails and the others still run, in order.
    probe = vllm_engine(tiny_loaded, mode="gundam")
    _pages, requests, _errors = probe.build_requests(probe.encode(GUNDAM), PruneConfig(keep=0.5))
    lengths = [r.unpruned_length for r in requests]
    longest = max(range(3), key=lambda i: lengths[i])
    assert sorted(lengths)[1] < lengths[longest]  # the page lengths differ
    llm = FakeLLM(lambda n, prompt, params: ([50 + prompt["prompt_embeds"].shape[0], 1], "stop"))
    engine = vllm_engine(tiny_loaded, mode="gundam", llm=llm, max_positions=lengths[longest])
    outputs = engine.run(GUNDAM)

    ((prompts, params, _),) = llm.calls
    assert len(prompts) == 2  # the page without room was never submitted
    statuses = [o.status for o in outputs]
    assert statuses[longest] == "model_error" and statuses.count("ok") == 2
    assert (
        outputs[longest].error
        == f"prompt of {lengths[longest]} tokens leaves no room in {lengths[longest]} positions"
    )
    for i, out in enumerate(outputs):
        if i != longest:  # each result went back to the page whose prompt produced it
            assert out.token_ids == [50 + out.tokens.prompt, 1]
            assert out.tokens.prompt_unpruned == lengths[i]
    cap = [p.kwargs["max_tokens"] for p in params]
    assert cap == [min(12, lengths[longest] - lengths[i]) for i in range(3) if i != longest]


def test_a_batch_is_encoded_in_chunks_and_decoded_in_one_vllm_call(tiny_loaded, monkeypatch):
    llm = FakeLLM()
    engine = vllm_engine(tiny_loaded, llm=llm)
    engine.encode_chunk = 2
    calls = []
    original = tiny_loaded.model.model.get_image_features

    def counting(*args, **kwargs):
        calls.append(kwargs["pixel_values"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_loaded.model.model, "get_image_features", counting)
    outputs = engine.run(TINY)
    assert calls == [2, 1] and len(llm.calls) == 1 and len(outputs) == 3
    assert [o.token_ids for o in outputs] == [[40, 41, 1], [41, 41, 1], [42, 41, 1]]


@pytest.mark.parametrize("keep", [0.5, "auto"])
def test_hf_decoding_the_vllm_payload_equals_hf_with_encoder_outputs_at_compact_positions(
    tiny_loaded, keep
):
    """What vLLM receives is the prompt HF's model builds from `mm_encoder_outputs`: decoding it
    with HF `generate` (compact positions both ways, the same n-gram rule) gives the same tokens."""
    engine = vllm_engine(tiny_loaded, keep=keep, tokens=24)
    encoded = engine.encode(TINY)
    pages, requests, _ = engine.build_requests(encoded, PruneConfig(keep=keep))
    loaded = tiny_loaded
    config = GenerationConfig(
        do_sample=False, max_new_tokens=24, eos_token_id=loaded.eos_token_id,
        pad_token_id=loaded.pad_token_id, bos_token_id=loaded.bos_token_id,
    )  # fmt: skip
    whitelist = engine.hf.whitelist
    for request, page in zip(requests, pages):
        n = request.prompt_embeds.shape[0]
        compact = torch.arange(n).unsqueeze(0)
        with torch.inference_mode():
            from_payload = loaded.model.generate(
                inputs_embeds=request.prompt_embeds.unsqueeze(0),
                attention_mask=torch.ones(1, n, dtype=torch.long),
                position_ids=compact,
                generation_config=config,
                logits_processor=LogitsProcessorList([WindowedNoRepeatNGram(30, 90, 0, whitelist)]),
            )[0].tolist()
            ids = torch.tensor(
                [engine.hf.parts.ids(loaded.image_token_id, int(page.positions.numel()))]
            )
            from_encoder = loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                position_ids=compact,
                mm_encoder_outputs={
                    "image": BaseModelOutputWithPooling(pooler_output=[page.embeddings])
                },
                generation_config=config,
                logits_processor=LogitsProcessorList([WindowedNoRepeatNGram(30, 90, n, whitelist)]),
            )[0, n:].tolist()
        assert len(from_payload) >= 2
        assert from_payload == from_encoder
