"""The runtime contract: the shared batch driver, the engine factory, `--engine`, and the whole
`convert` pipeline on the `vllm` engine over a fake `LLM` (vLLM itself is never imported)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from docgen import make_pdf
from test_vllm_engine import FakeLLM, FakeSampling
from typer.testing import CliRunner

from ocrprune import preflight
from ocrprune.cli import app
from ocrprune.run.batching import BatchFailure, run_split
from ocrprune.runtime.api import Backend, BackendBase, PageOutput

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny-random", "--device", "cpu", "--mode", "tiny", "--max-new-tokens", "8"]


# ---- run_split: the one batch driver of convert and sweep ------------------------------------------


def drive(items, run, recover=None):
    delivered = []
    run_split(
        items, run, lambda item, out: delivered.append((item, out)), recover or (lambda: None)
    )
    return delivered


def test_a_failing_batch_is_halved_down_to_the_page_that_fails_and_the_rest_still_run():
    calls, recovered = [], []

    def run(batch):
        calls.append(list(batch))
        if 3 in batch:
            raise ValueError("page 3 breaks")
        return [f"out {n}" for n in batch]

    delivered = drive([1, 2, 3, 4, 5], run, lambda: recovered.append(1))
    assert calls == [[1, 2, 3, 4, 5], [1, 2, 3], [1, 2], [3], [4, 5]]
    assert delivered == [
        (1, "out 1"),
        (2, "out 2"),
        (3, BatchFailure("ValueError: page 3 breaks")),
        (4, "out 4"),
        (5, "out 5"),
    ]
    assert len(recovered) == 3  # after each failed call


def test_out_of_memory_on_a_single_page_is_named_plainly():
    def run(batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert drive(["p"], run) == [("p", BatchFailure("CUDA out of memory"))]


def test_a_wrong_number_of_outputs_fails_the_whole_batch_without_a_retry():
    calls = []

    def run(batch):
        calls.append(len(batch))
        return ["only one"]

    message = "the engine returned 1 outputs for 3 pages"
    assert drive(["a", "b", "c"], run) == [(x, BatchFailure(message)) for x in "abc"]
    assert calls == [3]


def test_interrupts_are_not_swallowed_by_the_driver():
    def run(batch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drive([1, 2], run)


def test_backend_base_gives_every_declared_method_a_default():
    class OnlyRun(BackendBase):
        def run(self, images):
            return []

    engine = OnlyRun()
    assert isinstance(engine, Backend)
    assert (engine.recover(), engine.peak_gpu_mb(), engine.batch_size_hint()) == (None, None, 1)


def test_the_run_description_is_built_above_the_engine_from_settings_and_what_it_loaded(tiny_loaded):
    from ocrprune import __version__
    from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig
    from ocrprune.records import RunInfo
    from ocrprune.runtime import resolve_device_dtype
    from ocrprune.runtime.api import EncodingBackend, LoadedInfo, describe_run
    from ocrprune.runtime.hf.backend import HfBackend

    generation, prune = GenerationSettings(mode="tiny", max_new_tokens=8), PruneConfig(keep=0.5)
    engine = HfBackend(tiny_loaded, generation, prune)
    assert isinstance(engine, EncodingBackend)
    loaded = engine.loaded_info()
    assert loaded == LoadedInfo(model="tiny-random", revision=None, device="cpu", dtype="fp32", dummy=True)
    assert resolve_device_dtype(ModelConfig(model="tiny-random", device="cpu")) == ("cpu", "fp32")
    assert resolve_device_dtype(ModelConfig(device="cpu", dtype="bf16")) == ("cpu", "bf16")
    assert describe_run(loaded, generation=generation, prune=prune, engine="vllm") == RunInfo(
        model="tiny-random", revision=None, mode="tiny", keep="0.5", prune_method="rtprune",
        prompt=generation.prompt, device="cpu", dtype="fp32", dummy_model=True, version=__version__,
        engine="vllm", positions="compact",
    )


def test_the_contract_and_the_pipeline_import_without_torch():
    code = "import sys, ocrprune.runtime.api, ocrprune.run.local, ocrprune.sweep.run; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "False"


# ---- --engine vllm ---------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_is_one_line_and_exit_5(tmp_path):
    pdf = make_pdf(tmp_path / "doc.pdf")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ocrprune",
            "convert",
            str(pdf),
            "-o",
            str(tmp_path / "out"),
            "--engine",
            "vllm",
            *TINY,
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 5
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "--engine vllm needs vLLM, which is not installed" in lines[0]
    assert "pip install 'ocrprune[vllm]'" in lines[0]
    assert not (tmp_path / "out" / "doc.pdf.md").exists()


def test_unknown_engine_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--engine", "tgi"])
    assert result.exit_code == 2


@pytest.fixture
def fake_vllm(monkeypatch, tiny_loaded):
    """`--engine vllm` opens a real VllmEngine (tiny model encoder + RTPrune) over a fake `LLM`."""
    from ocrprune.runtime.hf.engine import Engine
    from ocrprune.runtime.vllm import engine as vllm_engine

    llms: list[FakeLLM] = []

    def script(n, prompt, params):
        # The second page of each vLLM call runs into its token cap; every other page stops at EOS.
        if n == 1:
            return ([20, 21, 22] * 10)[: params.kwargs["max_tokens"]], "length"
        return [30 + n, 31, 1], "stop"

    def open_fake(model, generation, prune):
        llm = FakeLLM(script)
        llms.append(llm)
        hf = Engine(tiny_loaded, generation, prune)
        return vllm_engine.VllmEngine(hf, llm, FakeSampling, batch_hint=2)

    monkeypatch.setattr(vllm_engine, "open_vllm_backend", open_fake)
    # The fake stands in for an installed vLLM, for the CLI's cheap check as well.
    monkeypatch.setattr(preflight, "vllm_installed", lambda: True)
    return llms


def test_convert_with_engine_vllm_end_to_end_over_a_fake_llm(tmp_path, fake_vllm):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "convert",
            str(pdf),
            "-o",
            str(out),
            "--base",
            str(tmp_path),
            "--engine",
            "vllm",
            "--keep",
            "0.5",
            *TINY,
        ],
    )

    assert result.exit_code == 3, result.output  # one page capped: partial
    (llm,) = fake_vllm
    assert [len(prompts) for prompts, _params, _tqdm in llm.calls] == [2, 1]  # batch hint 2
    doc = json.loads((out / "doc.pdf.json").read_text())
    assert (doc["engine"], doc["positions"]) == ("vllm", "compact")
    assert [(p["page"], p["status"]) for p in doc["pages"]] == [(1, "ok"), (2, "length"), (3, "ok")]
    assert [p["tokens"]["generated"] for p in doc["pages"]] == [3, 8, 3]
    assert doc["pages"][0]["keep"]["ratio"] == 0.5
    assert (
        doc["pages"][0]["tokens"]["visual_kept"] == 32
        and doc["pages"][0]["timings_ms"]["prefill"] == 0.0
    )
    report = json.loads((out / "report.json").read_text())
    assert (report["run"]["engine"], report["run"]["positions"]) == ("vllm", "compact")
    assert report["pages"]["by_status"]["length"] == 1

    # The engine is part of the resume key: the same engine skips, the other one redoes.
    again = CliRunner().invoke(
        app,
        [
            "convert",
            str(pdf),
            "-o",
            str(out),
            "--base",
            str(tmp_path),
            "--engine",
            "vllm",
            "--keep",
            "0.5",
            *TINY,
        ],
    )
    assert again.exit_code == 3 and len(fake_vllm) == 1 and len(llm.calls) == 2  # no engine opened
    hf = CliRunner().invoke(
        app, ["convert", str(pdf), "-o", str(out), "--base", str(tmp_path), "--keep", "0.5", *TINY]
    )
    assert hf.exit_code in (0, 3), hf.output
    doc = json.loads((out / "doc.pdf.json").read_text())
    assert (doc["engine"], doc["positions"]) == ("hf", "gapped")


def test_sweep_with_engine_vllm_decodes_every_setting_through_the_fake(tmp_path, fake_vllm):
    pdf = make_pdf(tmp_path / "doc.pdf", pages=2)
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(pdf),
            "-o",
            str(out),
            "--engine",
            "vllm",
            "--keep",
            "1,0.4",
            "--batch-size",
            "2",
            *TINY,
        ],
    )
    assert result.exit_code in (0, 3), result.output
    (llm,) = fake_vllm
    assert [len(prompts) for prompts, _p, _t in llm.calls] == [2, 2]  # reference, then keep 0.4
    data = json.loads((out / "sweep.json").read_text())
    assert (data["engine"], data["positions"]) == ("vllm", "compact")
    assert [s["keep"] for s in data["settings"]] == ["1", "0.4"]


def test_page_output_lives_in_the_torch_free_contract_and_the_engine_module_re_exports_it():
    from ocrprune.runtime.hf import engine

    assert engine.PageOutput is PageOutput
