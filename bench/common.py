"""Shared plumbing for the benchmarks: machine description, honest timing, results files.

Every benchmark prints a plain table, then writes `<out>/<name>.json` and `<out>/<name>.png`
(default out: `bench/results/`). Timing rules (style habit 12): synchronise before every clock read,
leave the warm-up out, report the median, print device, dtype, batch and keep next to each figure.

This machine may be shared. On CPU a second busy process can make a two-thread matmul 20x slower,
so each timed sample also measures the CPU time that *other* processes used meanwhile (from
/proc/stat); a sample taken while others used more than a small share of a core is thrown away and
taken again once the machine is quiet. The JSON records how many samples were retaken.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
SAMPLE_DOCS = REPO / "sample_docs"


# ---- command line -------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny configuration for CI: proves it runs, measures nothing",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="folder for <name>.json and <name>.png (default bench/results)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--no-wait", action="store_true", help="do not wait for other processes to go quiet (CPU)"
    )
    return p


def pick_device(name: str) -> Any:
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def dtype_name(dtype: Any) -> str:
    return "bf16" if str(dtype).endswith("bfloat16") else "fp32"


# ---- machine -----------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def machine(device: Any = None) -> dict[str, Any]:
    """CPU model and cores, memory, library versions, and the GPU when one is used."""
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    described: dict[str, Any] = {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_family_model": f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}",
        "cpu_cores": cores,
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
    }
    try:
        import torch
        import transformers

        described.update(
            torch=torch.__version__,
            transformers=transformers.__version__,
            torch_threads=torch.get_num_threads(),
        )
        if device is not None and getattr(device, "type", "") == "cuda":
            props = torch.cuda.get_device_properties(device)
            described.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    except ImportError:
        pass
    described["summary"] = summary(described)
    return described


def summary(m: dict[str, Any]) -> str:
    text = f"{m['cpu']} ({m['cpu_family_model']}), {m['cpu_cores']} cores, {m['memory_gib']} GiB"
    if m.get("gpu"):
        text += f"; GPU {m['gpu']} ({m['gpu_memory_gib']} GiB)"
    return text


# ---- noisy neighbours --------------------------------------------------------------------------


def _jiffies() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies used by this process), or None without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Guard:
    """Measures what other processes take from the CPU while we time something."""

    enabled: bool = True
    max_share: float = 0.10  # of one core, averaged over the sample
    slack_s: float = 0.03  # /proc/stat ticks are 10 ms
    budget_s: float = 1800.0  # stop retaking samples once this much time went to waiting
    retaken: int = 0
    waited_s: float = 0.0
    worst_foreign_cores: float = 0.0
    hz: int = field(
        default_factory=lambda: os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    )

    def snapshot(self) -> tuple[float, tuple[int, int] | None]:
        return time.perf_counter(), _jiffies()

    def foreign_s(self, start: tuple[float, tuple[int, int] | None]) -> float:
        """CPU seconds other processes used since `start`."""
        now = _jiffies()
        if start[1] is None or now is None:
            return 0.0
        busy = now[0] - start[1][0]
        own = now[1] - start[1][1]
        return max(0, busy - own) / self.hz

    def clean(self, start: tuple[float, tuple[int, int] | None]) -> bool:
        wall = time.perf_counter() - start[0]
        foreign = self.foreign_s(start)
        if wall > 0:
            self.worst_foreign_cores = max(self.worst_foreign_cores, foreign / wall)
        return not self.enabled or foreign <= self.max_share * wall + self.slack_s

    def wait_quiet(self, limit_s: float = 300.0, window_s: float = 1.0) -> None:
        """Block until other processes use under 0.2 of a core over a 1 s window (or `limit_s`)."""
        if not self.enabled or _jiffies() is None or self.waited_s >= self.budget_s:
            return
        began = time.perf_counter()
        told = False
        while time.perf_counter() - began < limit_s:
            start = self.snapshot()
            time.sleep(window_s)
            if self.foreign_s(start) / window_s < 0.2:
                break
            if not told:
                print(
                    "  (other processes are busy on this machine; waiting for quiet)",
                    file=sys.stderr,
                    flush=True,
                )
                told = True
        self.waited_s += time.perf_counter() - began

    def measure(self, sample: Callable[[], Any], retries: int = 6) -> Any:
        """Run `sample()` until it was not disturbed (at most `retries` extra times)."""
        for attempt in range(retries + 1):
            start = self.snapshot()
            result = sample()
            if self.clean(start) or attempt == retries or self.waited_s >= self.budget_s:
                return result
            self.retaken += 1
            self.wait_quiet()
        return result

    def record(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "samples_retaken": self.retaken,
            "waited_s": round(self.waited_s, 1),
            "worst_foreign_cores": round(self.worst_foreign_cores, 2),
            "gave_up_waiting": self.waited_s >= self.budget_s,
            "rule": f"a sample is retaken when other processes used more than {self.max_share:g} of a core during it",
        }


def make_guard(args: argparse.Namespace, device: Any) -> Guard:
    guard = Guard(
        enabled=not args.no_wait and getattr(device, "type", "cpu") == "cpu" and not args.quick
    )
    guard.wait_quiet()
    return guard


# ---- numbers -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(reference: float, value: float) -> float:
    return reference / value if value > 0 else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; floats get 2 decimals unless already formatted."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---- results -----------------------------------------------------------------------------------


def write_results(
    out: Path,
    name: str,
    payload: dict[str, Any],
    png: bytes | None,
) -> tuple[Path, Path | None]:
    """Write `<out>/<name>.json` (and `.png`) atomically; returns the paths."""
    from ocrprune.writers.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    atomic_write(json_path, json.dumps(_finite(payload), indent=2, ensure_ascii=False) + "\n")
    png_path = None
    if png is not None:
        png_path = out / f"{name}.png"
        atomic_write(png_path, png)
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""), file=sys.stderr)
    return json_path, png_path


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined figures become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def header(args: argparse.Namespace, name: str, started: float) -> dict[str, Any]:
    return {
        "benchmark": name,
        "quick": bool(args.quick),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": "python " + " ".join([f"bench/{name}.py"] + sys.argv[1:]),
    }


# ---- generated documents -----------------------------------------------------------------------

WORDS = [
    "batch",
    "ocr",
    "page",
    "token",
    "prune",
    "keep",
    "ratio",
    "vision",
    "encoder",
    "decoder",
    "prefill",
    "invoice",
    "letter",
    "report",
    "table",
    "figure",
    "archive",
    "scan",
    "document",
    "model",
    "sample",
    "result",
    "value",
    "total",
    "amount",
    "date",
    "name",
    "number",
    "section",
]


def write_pdf(path: Path, pages: int, seed: int = 0) -> Path:
    """An A4 PDF of `pages` text pages (a title, paragraphs, a small ruled table), seeded."""
    import random

    import pymupdf

    rng = random.Random(seed)
    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=595, height=842)
        page.insert_text((56, 64), f"Generated report {seed}, page {n}", fontsize=16)
        text = "\n\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90))).capitalize() + "."
            for _ in range(rng.randint(2, 4))
        )
        page.insert_textbox(pymupdf.Rect(56, 90, 539, 560), text, fontsize=10)
        for row in range(5):
            for col in range(4):
                cell = pymupdf.Rect(56 + col * 120, 580 + row * 22, 176 + col * 120, 602 + row * 22)
                page.draw_rect(cell, color=(0, 0, 0), width=0.5)
                page.insert_text(
                    (cell.x0 + 4, cell.y1 - 7),
                    f"{rng.choice(WORDS)} {rng.randint(1, 999)}",
                    fontsize=9,
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(str(path), deflate=True)
    doc.close()
    return path
