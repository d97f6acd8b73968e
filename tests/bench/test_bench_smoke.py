"""Each benchmark still runs: `bench/<name>.py --quick --out TMP` exits 0 and writes its JSON and PNG.

This times nothing (benchmarks are not tests); the quick configurations use toy widths or the
tiny-random model, and write only into a temporary folder, never into bench/results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
ROW_KEYS = {"device", "machine"}
REQUIRED = {
    "prefill": {
        "mode",
        "keep",
        "batch",
        "device",
        "dtype",
        "prefill_ms",
        "prefill_speedup",
        "decode_ms",
        "machine",
    },
    "breakdown": {
        "mode",
        "keep",
        "encode_ms",
        "prune_ms",
        "prefill_ms",
        "decode_ms_per_token",
        "total_ms",
        "total_speedup",
    },
    "prune_overhead": {"mode", "keep", "prune_ms", "prefill_ms", "prune_share_of_prefill"},
    "throughput": {"keep", "pages", "pages_per_s", "wall_s", "tokens_per_page", "speedup"},
    "raster": {"path", "pages", "ms_per_page", "pages_per_s", "speedup_vs_naive"},
    "memory": {"pages", "peak_rss_mb", "pages_processed", "ratio_to_small"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_bench_quick_run_writes_results_with_the_required_fields(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        f"{name}.json",
        f"{name}.png",
    ]
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["quick"] is True
    assert data["machine"]["cpu_cores"] >= 1
    assert data["rows"], "no result rows"
    for row in data["rows"]:
        missing = (REQUIRED[name] | ROW_KEYS) - set(row)
        assert not missing, f"{name} row lacks {sorted(missing)}"
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in done.stderr
    if name == "prefill":
        _check_prefill_rows(data["rows"])


def _check_prefill_rows(rows: list[dict]) -> None:
    """Every keep per (mode, batch), ratios to keep 1.0, and the real prompt lengths."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["batch"]), []).append(row)
    assert sorted(groups) == [("gundam", 1), ("gundam", 2), ("tiny", 1), ("tiny", 2)]
    for group in groups.values():
        assert [r["keep"] for r in group] == ["1", "0.84", "0.6", "0.4", "auto"]
        assert group[0]["prefill_speedup"] == 1.0 and group[0]["decode_speedup"] == 1.0
    tiny = groups[("tiny", 1)]
    assert tiny[0]["prompt_tokens"] == 1 + 73 + 9  # BOS, the 8 x 9 + 1 image block, the prompt text
    assert [r["visual_kept"] for r in tiny[:4]] == [64, 53, 38, 25]
    assert groups[("gundam", 1)][0]["prompt_tokens_unpruned"] == 1 + 903 + 9  # A4 page: 2 x 3 tiles
