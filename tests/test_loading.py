"""Model loading: official key layout, native config with full attention, offline errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from conftest import SHARED_MODEL
from ocrprune.config import ModelConfig
from ocrprune.errors import DeviceError, ModelLoadError
from ocrprune.runtime.loading import load_model, native_config, select_device


def _shape(key: str) -> str:
    return re.sub(r"\.\d+\.", ".N.", re.sub(r"\.\d+\.", ".N.", key))


def test_tiny_checkpoint_uses_the_official_deepseek_key_names(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    for expected in (
        "model.sam_model.patch_embed.proj.weight",
        "model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight",
        "model.projector.layers.weight",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.view_seperator",
        "model.image_newline",
        "lm_head.weight",
    ):
        assert expected in keys
    official = json.loads((SHARED_MODEL / "model.safetensors.index.json").read_text())["weight_map"]
    official_shapes = {_shape(k) for k in official}
    assert {_shape(k) for k in keys} <= official_shapes
    # Only CLIP's unused patch embedding is in the real checkpoint and not in ours.
    assert official_shapes - {_shape(k) for k in keys} == {"model.vision_model.embeddings.patch_embedding.weight"}


def test_official_layout_folder_loads_with_no_missing_or_unexpected_keys_and_same_logits(tiny_checkpoint):
    from transformers import UnlimitedOcrForConditionalGeneration

    folder, original = tiny_checkpoint
    config = native_config(json.loads((folder / "config.json").read_text()), original.config.image_token_id)
    loaded, info = UnlimitedOcrForConditionalGeneration.from_pretrained(
        str(folder), config=config, output_loading_info=True
    )
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    ids = torch.tensor([[0, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        a = original(input_ids=ids).logits
        b = loaded.eval()(input_ids=ids).logits
    assert torch.equal(a, b)


def test_load_model_reads_an_official_layout_folder(tiny_checkpoint):
    folder, original = tiny_checkpoint
    loaded = load_model(ModelConfig(model=str(folder), device="cpu"))
    assert loaded.dummy is False
    assert loaded.model.config.text_config.layer_types == ["full_attention", "full_attention"]
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name


def test_native_config_from_the_real_config_json_forces_full_attention():
    raw = json.loads((SHARED_MODEL / "config.json").read_text())
    config = native_config(raw)
    text = config.text_config
    assert text.layer_types == ["full_attention"] * 12
    assert text.mlp_layer_types == ["dense"] + ["sparse"] * 11
    assert text.max_position_embeddings == 8192
    assert (text.vocab_size, text.hidden_size, text.n_routed_experts, text.num_experts_per_tok) == (129280, 1280, 64, 6)
    assert text.tie_word_embeddings is False
    sam, clip = config.vision_config.sam_config, config.vision_config.encoder_config
    assert (sam.hidden_size, sam.num_hidden_layers, list(sam.downsample_channels), sam.mlp_dim) == (768, 12, [512, 1024], 3072)
    assert (clip.hidden_size, clip.num_hidden_layers, clip.num_attention_heads, clip.intermediate_size) == (1024, 24, 16, 4096)
    assert config.image_token_id == 128815


def test_real_tokenizer_gives_the_official_ids_for_the_default_prompt():
    from ocrprune.config import PROMPTS
    from ocrprune.runtime.loading import load_tokenizer
    from ocrprune.runtime.preprocess import prompt_parts

    tokenizer = load_tokenizer(SHARED_MODEL)
    parts = prompt_parts(tokenizer, PROMPTS["markdown"], bos_token_id=0)
    assert parts.ids(128815, 1) == [0, 128815, 201, 128820, 21842, 270, 4940, 304, 2121, 7919, 16]
    assert tokenizer.convert_tokens_to_ids(["<td>", "</td>"]) == [128821, 128822]


def test_offline_without_cache_gives_one_actionable_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model="deepseek-ai/DeepSeek-OCR", device="cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE=1" in message and "--model PATH" in message and "hf download deepseek-ai/DeepSeek-OCR" in message


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text((SHARED_MODEL / "config.json").read_text())
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights .*pickled"):
        load_model(ModelConfig(model=str(tmp_path), device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_an_environment_error():
    with pytest.raises(DeviceError, match="--device cuda"):
        select_device("cuda")


def test_cli_help_does_not_import_torch():
    code = (
        "import sys, ocrprune.cli, ocrprune.writers.markdown, ocrprune.report, ocrprune.pipeline;"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hub_id_loads_from_the_local_cache_when_offline(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from ocrprune.config import DEFAULT_MODEL, DEFAULT_REVISION

    folder, original = tiny_checkpoint
    snapshot = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-OCR" / "snapshots" / DEFAULT_REVISION
    shutil.copytree(folder, snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # The hub library reads its cache location once, at import; point it at our cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_model(ModelConfig(model=DEFAULT_MODEL, device="cpu"))
    assert loaded.revision == DEFAULT_REVISION and loaded.dummy is False
    assert torch.equal(loaded.model.lm_head.weight, original.lm_head.weight)
