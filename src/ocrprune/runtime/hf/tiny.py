"""The built-in `tiny-random` model: the real DeepSeek-OCR architecture classes at toy sizes.

It exists so the whole pipeline (preprocessing, vision encoder, pruning, batched generation,
post-processing, writers) runs anywhere in seconds, for tests, demos and CI. Its weights are random,
so its text is meaningless; every output it produces is flagged as such.

The default transformers init makes tiny models emit one token forever, which would make equality
tests prove nothing. We re-initialise with larger weights (runtime doc §8) under a fixed seed so the
output varies with the image and the position.
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    UnlimitedOcrConfig,
    UnlimitedOcrForConditionalGeneration,
)

from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1

_TOKENS = DEEPSEEK_OCR_V1.tokens
BOS = _TOKENS.bos
EOS = _TOKENS.eos
PAD = _TOKENS.pad
# DeepSeek-OCR's special tokens, in the order of their real ids (0, 1, 2, then 128815...).
SPECIAL_TOKENS: tuple[str, ...] = _TOKENS.all
_CHARS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer carrying DeepSeek's special tokens; needs no download."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + _CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token="[UNK]",
        padding_side="left",
    )


def tiny_config(vocab_size: int, image_token_id: int) -> UnlimitedOcrConfig:
    """Toy sizes with the real geometry: patch 16 and a 1024 SAM grid, so token counts are real."""
    return UnlimitedOcrConfig(
        vision_config={
            "sam_config": {
                "hidden_size": 32,
                "output_channels": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "mlp_dim": 64,
                "global_attn_indexes": [1],
                "downsample_channels": [32, 64],
            },
            "encoder_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            },
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "moe_intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "mlp_layer_types": ["dense", "sparse"],
            "layer_types": ["full_attention"] * 2,
            "max_position_embeddings": DEEPSEEK_OCR_V1.max_positions,
            "bos_token_id": _TOKENS.bos_id,
            "eos_token_id": _TOKENS.eos_id,
            "pad_token_id": _TOKENS.pad_id,
        },
        image_token_id=image_token_id,
    )


@torch.no_grad()
def reinit_non_degenerate(model: UnlimitedOcrForConditionalGeneration, seed: int) -> None:
    """Random weights scaled so greedy decoding varies with the image and the position (doc §8).

    The scales were picked by looking at outputs: varied text, some pages ending with EOS and some
    running to the limit, and different text for different pages and keep settings.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.startswith(("model.language_model", "lm_head")) and param.dim() >= 2:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        elif name.startswith("model.vision_tower") and param.dim() >= 2 and "pos" not in name:
            # SAM's default init (std 1e-10) makes the encoder ignore its input entirely.
            fan_in = param[0].numel()
            param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
        elif name.startswith("model.multi_modal_projector") and param.dim() >= 2:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    # A slightly longer end-of-sequence row makes EOS win now and then, so pages end after tens of
    # tokens (like real pages) instead of running to the token limit.
    eos = model.config.text_config.eos_token_id
    model.lm_head.weight[eos] *= 1.15
    text = model.model.language_model
    text.embed_tokens.weight.copy_(torch.randn(text.embed_tokens.weight.shape, generator=generator))
    for vector in (model.model.image_newline, model.model.view_separator):
        vector.copy_(torch.randn(vector.shape, generator=generator))
    for layer in text.layers:
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "weight"):
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=generator) * 0.05)


def build_tiny_random(seed: int = 0) -> tuple[UnlimitedOcrForConditionalGeneration, PreTrainedTokenizerFast]:
    """Build the seeded tiny random model and its tokenizer (fp32, CPU, eval mode)."""
    tokenizer = build_tiny_tokenizer()
    config = tiny_config(len(tokenizer), tokenizer.convert_tokens_to_ids(_TOKENS.image))
    torch.manual_seed(seed)
    model = UnlimitedOcrForConditionalGeneration(config)
    reinit_non_degenerate(model, seed)
    return model.eval(), tokenizer
