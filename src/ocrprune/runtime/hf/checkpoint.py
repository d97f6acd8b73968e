"""Strict checkpoint checks: a model folder loads only if its weights are exactly the model's.

transformers fills whatever the checkpoint lacks with random values and drops what it does not know,
so a folder with renamed keys, a missing shard or half its tensors would run and write gibberish.
Before a byte of weights is read, the tensors the folder holds (names, shapes and dtypes from the
safetensors headers) are compared with the tensors the architecture needs, named as the official
DeepSeek-OCR checkpoint names them. Any difference is a `ModelLoadError` (exit 5) with one line
naming the folder and the first few tensors.

What the architecture needs is computed, not listed: the model is built on the meta device (no
memory) from the folder's config, and its state dict is renamed back to the checkpoint layout with
transformers' own reverse conversion (the one `save_pretrained` uses). Two explicit lists cover the
rest: checkpoint tensors the model legitimately does not use, and buffers computed at init.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ocrprune.errors import ModelLoadError
from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1
from ocrprune.names import escape_name

log = logging.getLogger("ocrprune")

SPEC = DEEPSEEK_OCR_V1
INDEX = "model.safetensors.index.json"
# How many names one error line lists before "and N more".
SHOWN = 5
# Checkpoint dtypes that load as float weights (cast to the run's fp32 or bf16, as transformers
# does). Integers, booleans and 8-bit floats are quantized or not weights at all: casting them
# would silently produce garbage.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: `layers.2` before `layers.10`."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)
    )


def listing(items: Iterable[str]) -> str:
    """`a, b, c, d, e and 12 more`: the first few names, naturally sorted, one line."""
    names = sorted(items, key=_natural)
    shown = ", ".join(escape_name(name) for name in names[:SHOWN])
    rest = len(names) - SHOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


def _where(folder: Path) -> str:
    return f"model folder {escape_name(str(folder))}"


def expected_tensors(native: Any) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of every tensor the architecture of `native` loads.

    Also checks that every buffer not in the state dict is a known derived one, so nothing the
    model computes with is left at an unexplained init value.
    """
    from transformers import UnlimitedOcrForConditionalGeneration
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = UnlimitedOcrForConditionalGeneration(copy.deepcopy(native))
    state = model.state_dict()
    unknown = {name for name, _ in model.named_buffers()} - set(state) - set(SPEC.derived_buffers)
    if unknown:
        raise ModelLoadError(
            f"this transformers version's {type(model).__name__} has {len(unknown)} buffer(s) "
            f"ocrprune does not know how to fill: {listing(unknown)}; install a transformers "
            "version ocrprune supports (see pyproject.toml)"
        )
    official = revert_weight_conversion(model, dict(state))
    return {name: tuple(tensor.shape) for name, tensor in official.items()}


def _read_index(folder: Path) -> dict[str, str]:
    """The index's tensor -> file map; a damaged index is an error, never a partial load."""
    try:
        weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{_where(folder)}: {INDEX} cannot be read ({type(exc).__name__}); "
            "download the folder again"
        ) from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in weight_map.items()
    ):
        raise ModelLoadError(
            f"{_where(folder)}: {INDEX} has no valid weight_map; download the folder again"
        )
    outside = {
        name for name in weight_map.values() if Path(name).name != name or name.startswith(".")
    }
    if outside:
        raise ModelLoadError(
            f"{_where(folder)}: {INDEX} names weight file(s) outside the folder: {listing(outside)}"
        )
    return weight_map


def weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The safetensors files to read and the index map: the files the index lists, else all."""
    if not (folder / INDEX).exists():
        return sorted(folder.glob("*.safetensors")), None
    weight_map = _read_index(folder)
    listed = sorted(set(weight_map.values()), key=_natural)
    absent = [name for name in listed if not (folder / name).is_file()]
    if absent:
        raise ModelLoadError(
            f"{_where(folder)} is incomplete: {len(absent)} weight file(s) its {INDEX} lists are "
            f"missing: {listing(absent)}; is it fully downloaded?"
        )
    stray = {path.name for path in folder.glob("*.safetensors")} - set(listed)
    if stray:
        # Never read: every tensor the model needs comes from the files the index lists.
        log.warning(
            "%s: ignoring weight file(s) its %s does not list: %s",
            _where(folder),
            INDEX,
            listing(stray),
        )
    return [folder / name for name in listed], weight_map


def _open(stack: contextlib.ExitStack, folder: Path, path: Path) -> Any:
    """One file opened for pread (not mmap: touched mmap pages count as the process's memory)."""
    try:
        return stack.enter_context(
            safe_open(str(path), framework="pt", device="cpu", backend="pread")
        )
    except SafetensorError as exc:
        detail = escape_name((str(exc).strip() or "unreadable").splitlines()[0])
        raise ModelLoadError(
            f"{_where(folder)}: {escape_name(path.name)} is damaged or truncated ({detail}); "
            "download it again"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ModelLoadError(
            f"{_where(folder)}: cannot read {escape_name(path.name)} ({reason})"
        ) from None


def _check_layout(
    folder: Path, found: Mapping[str, list[str]], weight_map: dict[str, str] | None
) -> None:
    """Each tensor in exactly one file, and in the file the index names for it."""
    if weight_map is not None:
        wrong = [name for name, file in weight_map.items() if file not in found.get(name, [])]
        if wrong:
            shown = listing(f"{name} (in {weight_map[name]})" for name in wrong)
            raise ModelLoadError(
                f"{_where(folder)}: its {INDEX} does not match its weight files: {len(wrong)} "
                f"tensor(s) are not in the file it names: {shown}; download the folder again"
            )
        unlisted = [name for name in found if name not in weight_map]
        if unlisted:
            raise ModelLoadError(
                f"{_where(folder)}: its {INDEX} does not match its weight files: {len(unlisted)} "
                f"tensor(s) in them are not listed: {listing(unlisted)}; download the folder again"
            )
    twice = [name for name, files in found.items() if len(files) > 1]
    if twice:
        shown = listing(f"{name} (in {' and '.join(found[name])})" for name in twice)
        raise ModelLoadError(
            f"{_where(folder)}: {len(twice)} tensor(s) are stored in more than one weight "
            f"file: {shown}"
        )


def _check_names(folder: Path, present: set[str], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every needed tensor present; nothing else but the documented unused ones."""
    missing = set(expected) - present
    unexpected = present - set(expected) - set(SPEC.unused_checkpoint_tensors)
    need = (
        f"{len(missing)} tensor(s) the model needs are missing from its checkpoint: "
        f"{listing(missing)}"
    )
    extra = (
        f"{len(unexpected)} tensor(s) in its checkpoint are not part of the model: "
        f"{listing(unexpected)}"
    )
    if missing and unexpected:
        raise ModelLoadError(
            f"{_where(folder)} does not match {SPEC.hub_id}: {need}; {extra}; is it an unmodified "
            f"{SPEC.hub_id} checkpoint?"
        )
    if missing:
        raise ModelLoadError(f"{_where(folder)} is incomplete: {need}; is it fully downloaded?")
    if unexpected:
        raise ModelLoadError(
            f"{_where(folder)} does not match {SPEC.hub_id}: {extra}; "
            f"is it a {SPEC.hub_id} checkpoint?"
        )


def _dims(shape: Iterable[int]) -> str:
    return "x".join(str(size) for size in shape) or "scalar"


def _check_tensors(
    folder: Path, slices: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]
) -> None:
    """Shapes equal to the model's (its config.json must describe these weights); float dtypes."""
    wrong_shape = {
        name: tuple(slices[name].get_shape())
        for name, shape in expected.items()
        if tuple(slices[name].get_shape()) != shape
    }
    if wrong_shape:
        shown = listing(
            f"{name} ({_dims(got)}, the model needs {_dims(expected[name])})"
            for name, got in wrong_shape.items()
        )
        raise ModelLoadError(
            f"{_where(folder)} does not match its config.json: {len(wrong_shape)} tensor(s) "
            f"have the wrong shape: {shown}; are config.json and the weights from the same model?"
        )
    wrong_dtype = {name: slices[name].get_dtype() for name in expected}
    wrong_dtype = {name: dtype for name, dtype in wrong_dtype.items() if dtype not in FLOAT_DTYPES}
    if wrong_dtype:
        shown = listing(f"{name} ({dtype})" for name, dtype in wrong_dtype.items())
        raise ModelLoadError(
            f"{_where(folder)}: {len(wrong_dtype)} tensor(s) are stored in a type that cannot "
            f"be loaded as float weights: {shown}; only F32, BF16, F16 and F64 tensors load"
        )


@contextlib.contextmanager
def checked_slices(
    folder: Path, expected: Mapping[str, tuple[int, ...]]
) -> Iterator[dict[str, Any]]:
    """The checkpoint's needed tensors as lazy pread slices, after every check has passed.

    Only headers are read here; each tensor is copied into its own buffer later, when transformers
    converts it, so the load stays sequential and its peak memory does not grow. The documented
    unused tensors are left out, so transformers sees exactly what the model loads.
    """
    files, weight_map = weight_files(folder)
    with contextlib.ExitStack() as stack:
        found: dict[str, list[str]] = {}
        handles: dict[str, Any] = {}
        for path in files:
            handle = _open(stack, folder, path)
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                found.setdefault(key, []).append(path.name)
                handles[key] = handle
        _check_layout(folder, found, weight_map)
        _check_names(folder, set(found), expected)
        slices = {name: handles[name].get_slice(name) for name in expected}
        _check_tensors(folder, slices, expected)
        yield slices


def check_loaded(folder: Path, model: torch.nn.Module, info: Mapping[str, Any]) -> None:
    """After loading: transformers filled every state-dict entry and left nothing on meta.

    The checks above make this hold; this is the guard that no parameter was silently left at
    its random init (by a transformers change, say).
    """
    problems = set(info.get("missing_keys") or ()) | set(info.get("unexpected_keys") or ())
    problems |= {str(entry[0]) for entry in info.get("mismatched_keys") or ()}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    problems |= {name for name, tensor in tensors if tensor.is_meta}
    if problems or info.get("error_msgs"):
        raise ModelLoadError(
            f"{_where(folder)}: {len(problems)} model tensor(s) were not filled from its "
            f"checkpoint: {listing(problems) or escape_name(str(info.get('error_msgs')))}; "
            "is the installed transformers version one ocrprune supports?"
        )
