"""Resolve a model id or folder and build model and tokenizer on the chosen device and dtype.

DeepSeek-OCR v1 runs on transformers' native `UnlimitedOcr*` classes (runtime doc §0, §2.2). Its
official `config.json` says `deepseek_vl_v2`, so we always build the native config in code and force
full attention in every decoder layer: without `layer_types`, transformers silently turns every
layer into Unlimited-OCR's sliding-window attention, which is not DeepSeek-OCR.

Only safetensors are loaded, never remote code. The only files read here are model files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
    UnlimitedOcrConfig,
    UnlimitedOcrForConditionalGeneration,
)

from ocrprune.config import DEFAULT_MODEL, DEFAULT_REVISION, ModelConfig
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1
from ocrprune.names import escape_name

SPEC = DEEPSEEK_OCR_V1
_TOKENS = SPEC.tokens
from ocrprune.errors import DeviceError, ModelLoadError
from ocrprune.runtime.hf.checkpoint import INDEX, check_loaded, checked_slices, expected_tensors

log = logging.getLogger("ocrprune")

# Files we need from a hub repository: configs, tokenizer and safetensors weights. Nothing else
# (no *.py remote code, no pickled *.bin) is ever downloaded.
HUB_PATTERNS = ["*.json", "*.safetensors"]


@dataclass
class LoadedModel:
    """A ready model with what the engine needs to build prompts and stop generation."""

    model: UnlimitedOcrForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    model_id: str
    revision: str | None
    dummy: bool
    image_token_id: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    max_positions: int


def select_device(name: str) -> torch.device:
    """`auto` prefers CUDA; asking for CUDA where there is none is an environment error."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda was requested but CUDA is not available; use --device cpu")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU unless `--dtype bf16` asks otherwise."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def dtype_label(dtype: torch.dtype) -> str:
    """The short name reports and manifests use: `bf16` or `fp32`."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def _sam_config(vision: dict[str, Any]) -> dict[str, Any]:
    width = vision.get("width", {})
    sam = width.get("sam_vit_b", {})
    hidden = int(sam.get("width", 768))
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(sam.get("layers", 12)),
        "num_attention_heads": int(sam.get("heads", 12)),
        "global_attn_indexes": list(sam.get("global_attn_indexes", [2, 5, 8, 11])),
        "downsample_channels": list(sam.get("downsample_channels", [512, 1024])),
        # Not in the official file (fixed in SAM-B); present only in our tiny checkpoints.
        "mlp_dim": int(sam.get("mlp_dim", 4 * hidden)),
        "output_channels": int(sam.get("output_channels", 256)),
    }


def _clip_config(vision: dict[str, Any]) -> dict[str, Any]:
    width = vision.get("width", {})
    clip = width.get("clip-l-14-224", {})
    hidden = int(clip.get("width", 1024))
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(clip.get("layers", 24)),
        "num_attention_heads": int(clip.get("heads", 16)),
        "intermediate_size": int(clip.get("intermediate_size", 4 * hidden)),
    }


_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "moe_intermediate_size",
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "topk_method",
    "routed_scaling_factor",
    "rms_norm_eps",
    "bos_token_id",
    "eos_token_id",
)


def native_config(raw: dict[str, Any], image_token_id: int = _TOKENS.image_id) -> UnlimitedOcrConfig:
    """Build the native config from an official (`deepseek_vl_v2`) or native `config.json`.

    Every decoder layer gets full attention and 8192 positions, as DeepSeek-OCR was trained.
    """
    if raw.get("model_type") == "unlimited_ocr":
        text = dict(raw.get("text_config", {}))
        vision = raw.get("vision_config", {})
        sam, clip = dict(vision.get("sam_config", {})), dict(vision.get("encoder_config", {}))
        image_token_id = int(raw.get("image_token_id", image_token_id))
    else:
        language = raw.get("language_config", raw)
        text = {key: language[key] for key in _TEXT_KEYS if key in language}
        first_dense = int(language.get("first_k_dense_replace", 1))
        layers = int(text.get("num_hidden_layers", 12))
        text["mlp_layer_types"] = ["dense" if i < first_dense else "sparse" for i in range(layers)]
        vision = raw.get("vision_config", {})
        sam, clip = _sam_config(vision), _clip_config(vision)
        image_token_id = int(raw.get("image_token_id", image_token_id))
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "dtype"):
        text.pop(key, None)
        sam.pop(key, None)
        clip.pop(key, None)
    layers = int(text.get("num_hidden_layers", 12))
    text["layer_types"] = ["full_attention"] * layers
    text["max_position_embeddings"] = SPEC.max_positions
    text["tie_word_embeddings"] = False
    text.setdefault("pad_token_id", _TOKENS.pad_id)
    return UnlimitedOcrConfig(
        vision_config={"sam_config": sam, "encoder_config": clip},
        text_config=text,
        image_token_id=image_token_id,
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the two harmless warnings the official files trigger (doc §8) and progress bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_dir(model: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder as it is, or a hub id downloaded (or found in the cache) at a pinned revision."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {model}: not a folder; pass a model folder or a hub id")
        return path, revision
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        raise ModelLoadError(f"--model {model}: no such folder")
    rev = revision or (DEFAULT_REVISION if model == DEFAULT_MODEL else None)
    from huggingface_hub import snapshot_download

    offline = offline_requested()
    try:
        with quiet_transformers():
            folder = snapshot_download(
                repo_id=model, revision=rev, allow_patterns=HUB_PATTERNS, local_files_only=offline
            )
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one actionable line
        how = (
            f"download it on a networked machine with `hf download {model}"
            + (f" --revision {rev}" if rev else "")
            + "` and copy the folder here, then pass --model PATH"
        )
        reason = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else "cannot be downloaded"
        raise ModelLoadError(
            f"model {model!r} {reason} ({type(exc).__name__}); {how}, or use --model tiny-random to try the pipeline"
        ) from None
    return Path(folder), rev


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The folder's own tokenizer, never remote code (a plain call would stop and ask on a TTY)."""
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise ModelLoadError(f"--model {folder}: no tokenizer.json in the folder")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    tokenizer.padding_side = "left"
    return tokenizer


def _check_weights(folder: Path) -> None:
    if not list(folder.glob("*.safetensors")) and not (folder / INDEX).exists():
        pickled = list(folder.glob("*.bin")) + list(folder.glob("*.pt"))
        extra = " (found only pickled weights, which ocrprune never loads)" if pickled else ""
        raise ModelLoadError(f"--model {folder}: no *.safetensors weights{extra}")


@contextlib.contextmanager
def _sequential_loading() -> Iterator[None]:
    """Make transformers read each checkpoint tensor only when it converts it.

    By default it reads every tensor ahead on a thread pool, so a whole extra copy of the weights
    can be in flight at once. Sequential loading keeps the peak near the loaded weights.
    """
    previous = os.environ.get("HF_DEACTIVATE_ASYNC_LOAD")
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_DEACTIVATE_ASYNC_LOAD", None)
        else:
            os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = previous


def verify_model_folder(folder: Path) -> None:
    """Every strict-loading check on `folder` (from `resolve_model_dir`) without loading weights:
    for engines that read the folder themselves (vLLM), before they start."""
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"--model {folder}: no config.json in the folder")
    _check_weights(folder)
    with quiet_transformers():
        expected = expected_tensors(SPEC.convert_config(json.loads(config_path.read_text())))
    with checked_slices(folder, expected):
        pass


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build model and tokenizer for `cfg` on its device and dtype; errors are one clear line."""
    device = select_device(cfg.device)
    dtype = select_dtype(cfg.dtype, device)
    if cfg.is_tiny_random:
        model, tokenizer = SPEC.build_tiny(cfg.seed)
        revision: str | None = None
        dummy = True
    else:
        folder, revision = resolve_model_dir(cfg.model, cfg.revision)
        config_path = folder / "config.json"
        if not config_path.exists():
            raise ModelLoadError(f"--model {cfg.model}: no config.json in {folder}")
        _check_weights(folder)
        tokenizer = load_tokenizer(folder)
        image_id = tokenizer.convert_tokens_to_ids(_TOKENS.image)
        native = SPEC.convert_config(json.loads(config_path.read_text()), image_id)
        with quiet_transformers():
            expected = expected_tensors(native)
        try:
            # Built on the meta device and filled tensor by tensor in `dtype` on the CPU: no fp32
            # copy of a bf16 load, no mmap of the whole file. (Straight onto a GPU would need
            # `device_map`, hence accelerate; `.to(device)` below moves the model parameter by
            # parameter, so the host never holds more than the weights.) `checked_slices` refuses
            # a folder whose tensors are not exactly the model's before any weight is read.
            with (
                quiet_transformers(),
                _sequential_loading(),
                checked_slices(folder, expected) as slices,
            ):
                model, info = UnlimitedOcrForConditionalGeneration.from_pretrained(
                    None,
                    config=native,
                    state_dict=slices,
                    dtype=dtype,
                    attn_implementation=cfg.attn,
                    use_safetensors=True,
                    trust_remote_code=False,
                    generation_config=GenerationConfig(
                        bos_token_id=_TOKENS.bos_id, eos_token_id=_TOKENS.eos_id, pad_token_id=_TOKENS.pad_id
                    ),
                    output_loading_info=True,
                )
        except (OSError, SafetensorError) as exc:
            detail = escape_name((str(exc).strip() or type(exc).__name__).splitlines()[0])
            raise ModelLoadError(
                f"model folder {escape_name(str(folder))}: cannot read its weights ({detail})"
            ) from None
        check_loaded(folder, model, info)
        dummy = False
    model = model.to(device=device, dtype=dtype).eval()
    text_cfg = model.config.text_config
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _TOKENS.pad_id
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        model_id=cfg.model,
        revision=revision,
        dummy=dummy,
        image_token_id=int(model.config.image_token_id),
        bos_token_id=int(text_cfg.bos_token_id if text_cfg.bos_token_id is not None else _TOKENS.bos_id),
        eos_token_id=int(text_cfg.eos_token_id if text_cfg.eos_token_id is not None else _TOKENS.eos_id),
        pad_token_id=int(pad),
        max_positions=int(text_cfg.max_position_embeddings),
    )
