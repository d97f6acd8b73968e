"""`bench/gpu_engines.py --quick` still runs end to end on the CPU (tiny model, a stand-in for
vLLM that decodes the engine's `prompt_embeds` requests with HF): it times nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow  # about 25 s on a shared 2-core machine
def test_gpu_engines_quick_runs_both_engines_and_writes_json_and_png(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_engines.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_engines.json", "gpu_engines.png"]
    data = json.loads((tmp_path / "gpu_engines.json").read_text())
    assert data["benchmark"] == "gpu_engines" and data["quick"] is True
    cells = [(r["engine"], r["keep"], r["in_flight"]) for r in data["rows"]]
    assert cells == [
        (e, k, n) for e in ("hf", "vllm") for k in ("1", "0.4", "auto") for n in (2, 3)
    ]
    for row in data["rows"]:
        assert row["failed"] == 0 and row["calls"] == 1
        assert row["generated_tokens"] == 3 * row["in_flight"]  # EOS disabled: 3 tokens per page
        assert row["pages_per_s"] > 0 and row["generated_tokens_per_s"] > 0
    assert (tmp_path / "gpu_engines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
