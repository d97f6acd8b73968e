"""The cheap checks before anything heavy (#15 item 11, `--out` a file from item 13): one line, the
documented exit code, well under a second more than starting the CLI at all, torch never imported,
and `--out` never created."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from docgen import make_pdf
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune import preflight
from ocrprune.cli import app
from ocrprune.errors import DependencyError, DeviceError, ModelLoadError, OutputError

REPO = Path(__file__).resolve().parents[2]
HAS_CUDA = preflight.cuda_device_count()[0] > 0
HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_CUDA_LINE = (
    "ocrprune: --device cuda was requested but CUDA is not available "
    "(no NVIDIA driver: libcuda.so.1 not found); use --device cpu"
)


def run_cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -X importtime -m ocrprune ARGS` from this checkout, and its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("OCRPRUNE_OUT", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ocrprune", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done, time.perf_counter() - started


def imported(stderr: str) -> set[str]:
    """Top-level package names from `-X importtime` output."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def messages(stderr: str) -> list[str]:
    """stderr without the `-X importtime` lines."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    make_pdf(tmp_path / "doc.pdf", pages=1)
    return tmp_path / "doc.pdf"


def _model_without_config(tmp_path: Path) -> list[str]:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    return ["--model", "weights"]


CASES = {
    "cuda": (["--device", "cuda"], 5, NO_CUDA_LINE),
    "vllm": (
        ["--engine", "vllm", "--device", "cpu"],
        5,
        "ocrprune: --engine vllm needs vLLM, which is not installed: pip install 'ocrprune[vllm]'",
    ),
    "no such folder": (["--model", "./models/ds-ocr"], 5, "ocrprune: --model ./models/ds-ocr: no such folder"),
    "no config.json": (
        "without-config",
        5,
        "ocrprune: --model weights: no config.json in weights; pass a folder in the official layout "
        "(config.json, tokenizer, *.safetensors)",
    ),
    "out is a file": (
        ["--out", "notes.txt", "--model", "tiny-random"],
        6,
        "ocrprune: --out notes.txt is a file, not a folder",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cheap_environment_failures_exit_at_once_without_torch_or_out(case, doc, tmp_path):
    args, code, line = CASES[case]
    if case == "cuda" and HAS_CUDA:
        pytest.skip("this machine has CUDA")
    if case == "vllm" and HAS_VLLM:
        pytest.skip("vLLM is installed here")
    if args == "without-config":
        args = _model_without_config(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    # The same command stopped by a usage error found after every option is parsed: the cost of
    # starting the CLI at all, under whatever load this machine has right now.
    baseline, startup = run_cli("convert", "doc.pdf", "--out", "out", "--null", cwd=tmp_path)
    assert baseline.returncode == 2, baseline.stderr

    done, elapsed = run_cli("convert", "doc.pdf", "--out", "out", *args, cwd=tmp_path)

    assert done.returncode == code, done.stderr
    assert messages(done.stderr) == [line]
    assert done.stdout == ""
    assert not {"torch", "transformers", "huggingface_hub", "vllm"} & imported(done.stderr)
    assert elapsed - startup < 1.0, (elapsed, startup)  # the check itself: well under a second
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine\n"  # an --out file is never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["doc.pdf", "notes.txt", *(["weights"] if case == "no config.json" else [])]
    )


def test_sweep_checks_the_environment_first_too(doc, tmp_path):
    if HAS_CUDA:
        pytest.skip("this machine has CUDA")
    done, _ = run_cli("sweep", "doc.pdf", "--out", "sw", "--device", "cuda", cwd=tmp_path)
    assert done.returncode == 5, done.stderr
    assert messages(done.stderr) == [NO_CUDA_LINE]
    assert "torch" not in imported(done.stderr)
    assert not (tmp_path / "sw").exists()


def test_json_logs_carry_the_preflight_failure_as_one_record(doc, tmp_path):
    import json

    args = ["convert", "doc.pdf", "--out", "out", "--model", "./gone", "--log-format", "json"]
    done, _ = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 5
    (line,) = messages(done.stderr)
    record = json.loads(line)
    assert (record["level"], record["message"]) == ("error", "--model ./gone: no such folder")


def test_the_checks_run_before_the_pipeline_is_called(monkeypatch, tmp_path):
    """In-process: a failing check never reaches `runner.run` (so nothing under --out is made)."""
    called = []
    monkeypatch.setattr(runner, "run", lambda *a, **k: called.append(1))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["convert", "x.pdf", "--model", "/nonexistent/model", "--out", "o"])
    assert result.exit_code == 5
    assert result.output == "ocrprune: --model /nonexistent/model: no such folder\n"
    assert called == [] and not (tmp_path / "o").exists()


def test_stdout_runs_do_not_check_out(monkeypatch, tmp_path):
    """With --stdout nothing is written to --out, so a file there is no error."""
    seen = []
    monkeypatch.setattr(runner, "run", lambda config, **k: seen.append(config) or _ok())
    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(
        app, ["convert", "a.pdf", "--stdout", "--out", str(tmp_path / "notes.txt"), "--model", "tiny-random"]
    )
    assert result.exit_code == 0, result.output
    assert len(seen) == 1


def _ok() -> runner.RunOutcome:
    from ocrprune.errors import ExitCode

    return runner.RunOutcome(summary=None, docs=[], report=None, exit_code=ExitCode.OK)  # type: ignore[arg-type]


# -- the checks one by one -------------------------------------------------------------------------
def test_tiny_random_and_hub_ids_need_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in ("tiny-random", "deepseek-ai/DeepSeek-OCR", "org/name"):
        preflight.check_model(model)  # hub ids are left to loading (download or cache)


@pytest.mark.parametrize("model", ["./m", "/no/such/m", "~/no-such-ocrprune-model", "a/b/c"])
def test_paths_that_do_not_exist_are_named(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        preflight.check_model(model)
    assert str(caught.value) == f"--model {model}: no such folder"


def test_the_path_rule_is_the_loaders(tmp_path, monkeypatch):
    """Mirrors runtime.loading.resolve_model_dir: a missing name is a path or a hub id alike."""
    from ocrprune.runtime.hf.loading import resolve_model_dir

    monkeypatch.chdir(tmp_path)
    for model in ("./m", "/no/such/m", "~/no-such-ocrprune-model", "a/b/c"):
        assert preflight.looks_like_path(model)
        with pytest.raises(ModelLoadError, match="no such folder"):
            resolve_model_dir(model, None)
    for model in ("org/name", "name", "m/"):
        assert not preflight.looks_like_path(model)


def test_a_folder_with_config_json_passes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    preflight.check_model(str(tmp_path))


def test_a_file_as_model_is_not_a_folder(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"^--model .*m\.bin: not a folder; pass a model folder or a hub id$"):
        preflight.check_model(str(tmp_path / "m.bin"))


def test_cuda_without_a_driver_is_a_device_error(monkeypatch):
    monkeypatch.setattr(preflight, "_DRIVER_LIBRARIES", ("libno-such-ocrprune-cuda.so.1",))
    assert preflight.cuda_device_count() == (0, "no NVIDIA driver: libno-such-ocrprune-cuda.so.1 not found")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        preflight.check_device("cuda")
    preflight.check_device("auto")
    preflight.check_device("cpu")


def test_a_cpu_only_torch_is_a_device_error_even_with_a_driver(monkeypatch):
    monkeypatch.setattr(preflight, "cuda_device_count", lambda: (1, ""))
    monkeypatch.setattr(preflight, "torch_cuda_build", lambda: False)
    with pytest.raises(DeviceError, match="CPU-only build"):
        preflight.check_device("cuda")
    monkeypatch.setattr(preflight, "torch_cuda_build", lambda: True)
    preflight.check_device("cuda")


def test_the_torch_build_is_read_without_importing_torch():
    code = (
        "import sys; from ocrprune.preflight import torch_cuda_build; "
        "print(torch_cuda_build(), 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    import torch

    expected = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    assert out.split() == [str(expected), "False"]


def test_vllm_is_looked_up_without_importing_it(monkeypatch):
    looked_up = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: looked_up.append(name))
    with pytest.raises(DependencyError, match=r"pip install 'ocrprune\[vllm\]'"):
        preflight.check_engine("vllm")
    preflight.check_engine("hf")
    assert looked_up == ["vllm"] and "vllm" not in sys.modules


def test_on_ray_the_workers_check_the_environment(tmp_path):
    """The driver may have no GPU, no vLLM and no copy of the model: only --out is checked."""
    preflight.check_run(model="/models/on/the/workers", device="cuda", engine="vllm", out=tmp_path / "o", on_ray=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"is a file, not a folder$"):
        preflight.check_run(model="tiny-random", device="cpu", engine="hf", out=tmp_path / "f", on_ray=True)


def test_out_may_be_missing_a_folder_or_a_link_to_one(tmp_path):
    preflight.check_out_folder(tmp_path / "new")
    preflight.check_out_folder(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path)
    preflight.check_out_folder(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError) as caught:
        preflight.check_out_folder(tmp_path / "fifo")
    assert str(caught.value) == f"--out {tmp_path / 'fifo'} is not a folder"
