"""Model loading: official key layout, native config with full attention, offline errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import SHARED_MODEL
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ocrprune.config import ModelConfig
from ocrprune.errors import DeviceError, ModelLoadError
from ocrprune.runtime.hf.loading import load_model, native_config, select_device


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
    from ocrprune.runtime.hf.loading import load_tokenizer
    from ocrprune.runtime.hf.preprocess import prompt_parts

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
        "import sys, ocrprune.cli, ocrprune.writers.markdown, ocrprune.report, ocrprune.run.local;"
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


# --- Strict loading: a damaged official-layout folder is refused with one line (issue #15) ---------

HUB = "deepseek-ai/DeepSeek-OCR"


@pytest.fixture(scope="module")
def sharded_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint split into four shards with a `model.safetensors.index.json`."""
    folder, original = tiny_checkpoint
    sharded = tmp_path_factory.mktemp("tiny-sharded")
    original.save_pretrained(sharded, max_shard_size="500KB")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, sharded / name)
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    return sharded


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "model"))


def _rewrite(path: Path, change: Callable[[dict], None]) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _refusal(folder: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=str(folder), device="cpu"))
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "\n" not in message
    return message


def test_one_renamed_tensor_is_refused_naming_both_names(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)

    def rename(tensors):
        tensors["model.layers.1.mlp.router.weight"] = tensors.pop("model.layers.1.mlp.gate.weight")

    _rewrite(folder / "model.safetensors", rename)
    assert _refusal(folder) == (
        f"model folder {folder} does not match {HUB}: 1 tensor(s) the model needs are missing from "
        "its checkpoint: model.layers.1.mlp.gate.weight; 1 tensor(s) in its checkpoint are not part "
        f"of the model: model.layers.1.mlp.router.weight; is it an unmodified {HUB} checkpoint?"
    )


ALL_RENAMED = (
    f"does not match {HUB}: 105 tensor(s) the model needs are missing from its checkpoint: "
    "lm_head.weight, model.embed_tokens.weight, model.image_newline, "
    "model.layers.0.input_layernorm.weight, model.layers.0.mlp.down_proj.weight and 100 more; "
    "105 tensor(s) in its checkpoint are not part of the model: "
    "backbone.lm_head.weight, backbone.model.embed_tokens.weight, backbone.model.image_newline, "
    "backbone.model.layers.0.input_layernorm.weight, backbone.model.layers.0.mlp.down_proj.weight "
    f"and 100 more; is it an unmodified {HUB} checkpoint?"
)


def _rename_all(tensors: dict) -> None:
    for key in list(tensors):
        tensors[f"backbone.{key}"] = tensors.pop(key)


def test_all_renamed_tensors_are_refused_with_the_first_five_and_a_count(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", _rename_all)
    assert _refusal(folder) == f"model folder {folder} {ALL_RENAMED}"


def test_a_shard_the_index_lists_that_is_missing_is_refused(sharded_checkpoint, tmp_path):
    folder = _copy(sharded_checkpoint, tmp_path)
    (folder / "model-00003-of-00004.safetensors").unlink()
    assert _refusal(folder) == (
        f"model folder {folder} is incomplete: 1 weight file(s) its model.safetensors.index.json "
        "lists are missing: model-00003-of-00004.safetensors; is it fully downloaded?"
    )


def test_one_removed_tensor_is_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.experts.3.down_proj.weight"))
    assert _refusal(folder) == (
        f"model folder {folder} is incomplete: 1 tensor(s) the model needs are missing from its "
        "checkpoint: model.layers.1.mlp.experts.3.down_proj.weight; is it fully downloaded?"
    )


def test_half_the_tensors_removed_is_refused_not_an_internal_error(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)

    def drop_half(tensors):
        for key in sorted(tensors)[::2]:
            del tensors[key]

    _rewrite(folder / "model.safetensors", drop_half)
    assert _refusal(folder) == (
        f"model folder {folder} is incomplete: 53 tensor(s) the model needs are missing from its "
        "checkpoint: lm_head.weight, model.image_newline, model.layers.0.mlp.down_proj.weight, "
        "model.layers.0.mlp.up_proj.weight, model.layers.0.self_attn.k_proj.weight and 48 more; "
        "is it fully downloaded?"
    )


def test_an_unexpected_extra_tensor_is_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.update({"model.layers.0.mlp.extra_bias": torch.zeros(64)}))
    assert _refusal(folder) == (
        f"model folder {folder} does not match {HUB}: 1 tensor(s) in its checkpoint are not part of "
        f"the model: model.layers.0.mlp.extra_bias; is it a {HUB} checkpoint?"
    )


def test_the_official_unused_clip_patch_embedding_is_allowed_and_not_loaded(tiny_checkpoint, tmp_path):
    folder, original = tiny_checkpoint
    folder = _copy(folder, tmp_path)
    patch = {"model.vision_model.embeddings.patch_embedding.weight": torch.ones(64, 3, 14, 14)}
    _rewrite(folder / "model.safetensors", lambda t: t.update(patch))
    loaded = load_model(ModelConfig(model=str(folder), device="cpu"))
    assert loaded.model.state_dict().keys() == original.state_dict().keys()
    assert torch.equal(loaded.model.lm_head.weight, original.lm_head.weight)


def test_a_shape_mismatch_is_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.update({"model.projector.layers.bias": torch.zeros(65)}))
    assert _refusal(folder) == (
        f"model folder {folder} does not match its config.json: 1 tensor(s) have the wrong shape: "
        "model.projector.layers.bias (65, the model needs 64); are config.json and the weights from "
        "the same model?"
    )


def test_a_tensor_stored_as_integers_is_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", lambda t: t.update({"model.norm.weight": torch.ones(64, dtype=torch.int32)}))
    assert _refusal(folder) == (
        f"model folder {folder}: 1 tensor(s) are stored in a type that cannot be loaded as float "
        "weights: model.norm.weight (I32); only F32, BF16, F16 and F64 tensors load"
    )


def test_a_truncated_safetensors_file_is_refused(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    path = folder / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)
    assert _refusal(folder) == (
        f"model folder {folder}: model.safetensors is damaged or truncated (Error while deserializing "
        "header: incomplete metadata, file not fully covered); download it again"
    )


def test_an_index_pointing_a_tensor_at_the_wrong_shard_is_refused(sharded_checkpoint, tmp_path):
    folder = _copy(sharded_checkpoint, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    assert index["weight_map"]["lm_head.weight"] == "model-00001-of-00004.safetensors"
    index["weight_map"]["lm_head.weight"] = "model-00004-of-00004.safetensors"
    index_path.write_text(json.dumps(index))
    assert _refusal(folder) == (
        f"model folder {folder}: its model.safetensors.index.json does not match its weight files: "
        "1 tensor(s) are not in the file it names: lm_head.weight (in model-00004-of-00004.safetensors); "
        "download the folder again"
    )


def test_a_tensor_removed_from_shard_and_index_is_refused(sharded_checkpoint, tmp_path):
    folder = _copy(sharded_checkpoint, tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop("model.norm.weight")
    index_path.write_text(json.dumps(index))
    _rewrite(folder / shard, lambda t: t.pop("model.norm.weight"))
    assert _refusal(folder) == (
        f"model folder {folder} is incomplete: 1 tensor(s) the model needs are missing from its "
        "checkpoint: model.norm.weight; is it fully downloaded?"
    )


def test_a_complete_sharded_checkpoint_loads_the_same_weights(sharded_checkpoint, tiny_checkpoint):
    original = tiny_checkpoint[1]
    loaded = load_model(ModelConfig(model=str(sharded_checkpoint), device="cpu"))
    state = loaded.model.state_dict()
    assert state.keys() == original.state_dict().keys()
    for name, tensor in original.state_dict().items():
        assert torch.equal(state[name], tensor), name
    ids = torch.tensor([[0, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, original(input_ids=ids).logits)


def test_a_damaged_hub_download_is_refused_like_a_folder(tiny_checkpoint, tmp_path, monkeypatch):
    from ocrprune.config import DEFAULT_MODEL, DEFAULT_REVISION

    snapshot = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-OCR" / "snapshots" / DEFAULT_REVISION
    shutil.copytree(tiny_checkpoint[0], snapshot)
    _rewrite(snapshot / "model.safetensors", lambda t: t.pop("lm_head.weight"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelConfig(model=DEFAULT_MODEL, device="cpu"))
    assert str(info.value) == (
        f"model folder {snapshot} is incomplete: 1 tensor(s) the model needs are missing from its "
        "checkpoint: lm_head.weight; is it fully downloaded?"
    )


def test_a_parameter_transformers_left_unfilled_is_refused(tiny_checkpoint):
    from ocrprune.runtime.hf.checkpoint import check_loaded

    folder, original = tiny_checkpoint
    check_loaded(folder, original, {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()})
    info = {"missing_keys": {"model.language_model.norm.weight"}, "unexpected_keys": set(), "mismatched_keys": set()}
    with pytest.raises(ModelLoadError) as error:
        check_loaded(folder, original, info)
    assert str(error.value) == (
        f"model folder {folder}: 1 model tensor(s) were not filled from its checkpoint: "
        "model.language_model.norm.weight; is the installed transformers version one ocrprune supports?"
    )


def test_every_buffer_outside_the_checkpoint_is_a_documented_derived_one(tiny_checkpoint):
    from ocrprune.models import DEEPSEEK_OCR_V1
    from ocrprune.runtime.hf.checkpoint import expected_tensors

    folder, original = tiny_checkpoint
    config = native_config(json.loads((folder / "config.json").read_text()), original.config.image_token_id)
    expected = expected_tensors(config)
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        names = handle.keys()
        assert {k: tuple(handle.get_slice(k).get_shape()) for k in names} == expected
    derived = {name for name, _ in original.named_buffers()} - set(original.state_dict())
    assert derived == set(DEEPSEEK_OCR_V1.derived_buffers)


def test_the_real_index_lists_exactly_the_needed_tensors_and_the_unused_patch_embedding():
    from ocrprune.models import DEEPSEEK_OCR_V1
    from ocrprune.runtime.hf.checkpoint import expected_tensors

    official = json.loads((SHARED_MODEL / "model.safetensors.index.json").read_text())["weight_map"]
    expected = expected_tensors(native_config(json.loads((SHARED_MODEL / "config.json").read_text())))
    assert len(official) == 2710 and len(expected) == 2709
    assert set(official) - set(expected) == set(DEEPSEEK_OCR_V1.unused_checkpoint_tensors)
    assert set(expected) <= set(official)
    assert expected["model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight"] == (3072, 1024)


def _convert(page: Path, model: Path, out: Path) -> subprocess.CompletedProcess:
    import ocrprune

    src = str(Path(ocrprune.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "ocrprune", "convert", str(page), "--model", str(model)]
    args += ["--device", "cpu", "--mode", "tiny", "--max-new-tokens", "8", "--out", str(out)]
    return subprocess.run(args, capture_output=True, text=True, env=env, check=False)


def _assert_cli_refusal(tmp_path: Path, folder: Path, expected: str) -> None:
    from conftest import draw_page

    inputs = tmp_path / "in"
    inputs.mkdir()
    draw_page().save(inputs / "page.png")
    before = sorted(p.name for p in folder.iterdir())
    result = _convert(inputs / "page.png", folder, tmp_path / "out")
    assert result.returncode == 5
    assert result.stderr == f"ocrprune: {expected}\n"
    assert "Traceback" not in result.stderr and result.stdout == ""
    out = tmp_path / "out"
    # Only ocrprune's own bookkeeping (its lock) may exist under --out: no document output.
    written = [p for p in out.rglob("*") if ".ocrprune" not in p.relative_to(out).parts] if out.exists() else []
    assert written == []
    assert sorted(p.name for p in inputs.iterdir()) == ["page.png"]
    assert sorted(p.name for p in folder.iterdir()) == before
    assert {p.name for p in tmp_path.iterdir()} <= {"in", "model", "out"}


@pytest.mark.slow  # a real process importing torch; fast: test_all_renamed_tensors_are_refused_with_the_first_five_and_a_count
def test_cli_refuses_a_folder_with_renamed_tensors_exit_5_one_line(tiny_checkpoint, tmp_path):
    folder = _copy(tiny_checkpoint[0], tmp_path)
    _rewrite(folder / "model.safetensors", _rename_all)
    _assert_cli_refusal(tmp_path, folder, f"model folder {folder} {ALL_RENAMED}")


@pytest.mark.slow  # a real process importing torch; fast: test_a_shard_the_index_lists_that_is_missing_is_refused
def test_cli_refuses_a_folder_missing_a_shard_exit_5_one_line(sharded_checkpoint, tmp_path):
    folder = _copy(sharded_checkpoint, tmp_path)
    (folder / "model-00002-of-00004.safetensors").unlink()
    _assert_cli_refusal(
        tmp_path,
        folder,
        f"model folder {folder} is incomplete: 1 weight file(s) its model.safetensors.index.json lists "
        "are missing: model-00002-of-00004.safetensors; is it fully downloaded?",
    )


def test_verify_model_folder_runs_the_same_checks_without_loading(sharded_checkpoint, tmp_path):
    from ocrprune.runtime.hf.loading import verify_model_folder

    verify_model_folder(sharded_checkpoint)
    folder = _copy(sharded_checkpoint, tmp_path)
    (folder / "model-00004-of-00004.safetensors").unlink()
    with pytest.raises(ModelLoadError) as info:
        verify_model_folder(folder)
    assert str(info.value) == (
        f"model folder {folder} is incomplete: 1 weight file(s) its model.safetensors.index.json "
        "lists are missing: model-00004-of-00004.safetensors; is it fully downloaded?"
    )


def test_a_weight_file_the_index_does_not_list_is_ignored_with_a_warning(
    sharded_checkpoint, tiny_checkpoint, tmp_path, caplog
):
    folder = _copy(sharded_checkpoint, tmp_path)
    stray = folder / "old.safetensors"
    shutil.copy(tiny_checkpoint[0] / "model.safetensors", stray)
    _rewrite(stray, _rename_all)
    with caplog.at_level("WARNING", logger="ocrprune"):
        loaded = load_model(ModelConfig(model=str(folder), device="cpu"))
    assert torch.equal(loaded.model.lm_head.weight, tiny_checkpoint[1].lm_head.weight)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"model folder {folder}: ignoring weight file(s) its model.safetensors.index.json does "
        "not list: old.safetensors"
    ]
