"""Cheap checks of the environment a run asks for, made before anything heavy is imported.

`--device cuda` without CUDA, `--engine vllm` without vLLM, a `--model` folder that does not exist
or lacks `config.json`, an `--out` that is a file: each would otherwise be found only after torch
is imported and the model looked up (seconds to minutes), and after `--out` is created and locked.
Here they cost a stat, a `find_spec` and at most one `dlopen`, and raise the same `OcrpruneError`
subclasses (exit 5, exit 6) the later checks raise. Stdlib only: importing this module never
imports torch. The later checks stay where they are; these only make the common mistakes fast.

Not yet checked on a GPU (none was lent): on one, `python -c "from ocrprune.preflight import
cuda_device_count; print(cuda_device_count())"` should print `(N, '')` with N >= 1.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

from ocrprune.config import TINY_RANDOM
from ocrprune.errors import DependencyError, DeviceError, ModelLoadError, OutputError
from ocrprune.names import escape_name

VLLM_HINT = "pip install 'ocrprune[vllm]'"
_DRIVER_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


def cuda_device_count() -> tuple[int, str]:
    """CUDA devices the NVIDIA driver sees (`CUDA_VISIBLE_DEVICES` applies), and why none when 0.

    Asks the driver library itself (`cuInit`, `cuDeviceGetCount`) instead of importing torch. Torch
    would initialise the same driver later in this process anyway, so nothing is paid twice.
    """
    library = None
    for name in _DRIVER_LIBRARIES:
        try:
            library = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if library is None:
        return 0, f"no NVIDIA driver: {_DRIVER_LIBRARIES[0]} not found"
    try:
        status = library.cuInit(0)
        if status != 0:
            return 0, f"the NVIDIA driver reports no usable device (cuInit error {status})"
        count = ctypes.c_int(0)
        status = library.cuDeviceGetCount(ctypes.byref(count))
    except (AttributeError, OSError) as exc:  # a library named libcuda without the driver API
        return 0, f"the NVIDIA driver cannot be used ({exc})"
    if status != 0:
        return 0, f"the NVIDIA driver reports no usable device (error {status})"
    return count.value, "" if count.value else "the NVIDIA driver sees no device"


def torch_cuda_build() -> bool | None:
    """Whether the installed torch was built with CUDA (or ROCm), read from `torch/version.py`
    without importing torch; None when that cannot be told (torch absent, layout unknown)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            text = (Path(folder) / "version.py").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        fields: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            name = name.split(":")[0].strip()
            if sep and name in ("cuda", "hip"):
                fields[name] = value.strip()
        if fields:
            return any(value not in ("None", "") for value in fields.values())
    return None


def check_device(device: str) -> None:
    """`--device cuda` needs a CUDA device and a torch built for it: DeviceError (exit 5) if not.
    `auto` and `cpu` always run."""
    if device != "cuda":
        return
    count, why = cuda_device_count()
    if count == 0:
        raise DeviceError(
            f"--device cuda was requested but CUDA is not available ({why}); use --device cpu"
        )
    if torch_cuda_build() is False:
        raise DeviceError(
            "--device cuda was requested but the installed torch is a CPU-only build; "
            "install a CUDA build of torch, or use --device cpu"
        )


def vllm_installed() -> bool:
    """Whether `import vllm` would find the package (looked up, not imported: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def check_engine(engine: str) -> None:
    """`--engine vllm` needs vLLM installed: DependencyError (exit 5) with the install command.
    (Its other needs, CUDA and a real model, are checked when the engine opens.)"""
    if engine == "vllm" and not vllm_installed():
        raise DependencyError(f"--engine vllm needs vLLM, which is not installed: {VLLM_HINT}")


def looks_like_path(model: str) -> bool:
    """The rule `runtime.loading.resolve_model_dir` applies to a `--model` that does not exist:
    a path (starts with `.`, `/` or `~`, or has more than one `/`) rather than a hub id."""
    return model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]


def check_model(model: str) -> None:
    """A `--model` that names a folder must be one, with `config.json` in it: ModelLoadError
    (exit 5) naming the folder otherwise. Hub ids and `tiny-random` are left to loading."""
    if model == TINY_RANDOM:
        return
    path = Path(model).expanduser()
    shown = escape_name(model)
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"--model {shown}: not a folder; pass a model folder or a hub id")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"--model {shown}: no config.json in {escape_name(str(path))}; "
                "pass a folder in the official layout (config.json, tokenizer, *.safetensors)"
            )
        return
    if looks_like_path(model):
        raise ModelLoadError(f"--model {shown}: no such folder")


def check_out_folder(out: Path) -> None:
    """`--out` must be a folder or not exist yet: an existing file there is exit 6, said plainly
    (a dangling link or an unreadable parent is left to the writer, which names the reason)."""
    try:
        if not out.exists() or out.is_dir():
            return
        is_file = out.is_file()
    except OSError:
        return
    shown = escape_name(str(out))
    what = "a file, not a folder" if is_file else "not a folder"
    raise OutputError(f"--out {shown} is {what}")


def check_run(
    *, model: str, device: str, engine: str, out: Path | None, on_ray: bool = False
) -> None:
    """Everything above, in the order loading would meet it (engine, device, model), after `--out`.

    `out` None: nothing is written there (`--stdout`). With `on_ray` the environment checks are
    the workers' business (the driver may have no GPU, no vLLM, no copy of the model), so only
    `--out` is checked here.
    """
    if out is not None:
        check_out_folder(out)
    if on_ray:
        return
    check_engine(engine)
    check_device(device)
    check_model(model)
