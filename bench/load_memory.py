"""Loading memory: peak RSS of `load_model` on a full-size checkpoint, as a ratio to the weights.

Writes the full-size DeepSeek-OCR architecture with random weights (`fullsize.build_model`, 3.3 B
parameters, 6.7 GB in bf16) to a temporary folder in the official hub layout (one safetensors file
with the original key names, the official `config.json`, a tokenizer), then loads it with
`ocrprune.runtime.hf.loading.load_model` on the CPU, once per dtype, each in a fresh child process, and
reads the child's own peak resident set size (`VmHWM`, which counts touched pages of a memory-mapped
file too; `wait4`'s figure is kept as a cross-check). Target: peak RSS at most
1.2 x the loaded weights' bytes + 1.5 GB (the interpreter, torch and transformers take 0.75 GB
before a byte of weights is read).

`--src DIR` measures another checkout's sources (for a before/after row); `--checkpoint DIR` reuses
a folder written by an earlier run (`--keep` keeps the one it writes).

    python bench/load_memory.py                       # CPU: writes 6.7 GB, then about 3 minutes
    python bench/load_memory.py --quick               # toy widths, seconds (proves it runs)
    python bench/load_memory.py --src /old/checkout/src --label before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, header, machine, parser, table, write_results

GB = 1e9
ALLOWANCE_BYTES = 1.5 * GB
TARGET_RATIO = 1.2

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch, transformers  # imports first, so their memory is reported on its own
from ocrprune.config import ModelConfig
from ocrprune.runtime.hf.loading import load_model
def high_water():
    # This process's own peak resident set (VmHWM), reset at exec; ru_maxrss would start from the
    # parent's size at fork time.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
imported = high_water()
began = time.perf_counter()
loaded = load_model(ModelConfig(model=sys.argv[2], device="cpu", dtype=sys.argv[3]))
seconds = time.perf_counter() - began
model = loaded.model
tensors = list(model.parameters()) + list(model.buffers())
print(json.dumps({
    "peak_rss_bytes": high_water(),
    "import_rss_bytes": imported,
    "load_s": seconds,
    "weight_bytes": sum(t.numel() * t.element_size() for t in tensors),
    "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in model.parameters()}),
    "module": loaded.model.__class__.__module__.split(".")[0],
    "src": __import__("ocrprune").__file__,
}))
"""


def write_checkpoint(folder: Path, quick: bool) -> dict[str, Any]:
    """The random full-size (or `quick` toy) model saved as the hub repository lays it out."""
    import torch
    from fullsize import SHARED_CONFIG, build_model

    from ocrprune.runtime.hf.tiny import build_tiny_random

    model, source = build_model(torch.device("cpu"), torch.bfloat16, quick=quick)
    model.save_pretrained(folder, max_shard_size="20GB")  # one file, as the official repository
    official = (
        json.loads(SHARED_CONFIG.read_text()) if SHARED_CONFIG.exists() and not quick else None
    )
    if official is None:
        from fullsize import ARCHITECTURE, QUICK_TEXT, QUICK_VISION

        official = json.loads(json.dumps(ARCHITECTURE))
        official["model_type"] = "deepseek_vl_v2"
        if quick:
            official["language_config"].update(QUICK_TEXT)
            official["vision_config"]["width"] = json.loads(json.dumps(QUICK_VISION))
    official["image_token_id"] = int(model.config.image_token_id)
    (folder / "config.json").write_text(json.dumps(official, indent=1))
    _, tokenizer = build_tiny_random(seed=0)
    tokenizer.save_pretrained(folder)
    files = sorted(folder.glob("*.safetensors"))
    del model
    return {
        "config_source": source,
        "safetensors_files": [f.name for f in files],
        "safetensors_bytes": sum(f.stat().st_size for f in files),
    }


def run_child(src: Path, folder: Path, dtype: str) -> dict[str, Any]:
    """Load `folder` in a fresh child importing ocrprune from `src`; the child's peak RSS."""
    env = dict(os.environ, PYTHONPATH="", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(src), str(folder), dtype],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0 or not stdout.strip():
        raise SystemExit(f"load_memory: {dtype} load exited {child.returncode}:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wait4_maxrss_bytes"] = usage.ru_maxrss * 1024  # cross-check; the parent stays small
    return result


def row(label: str, dtype: str, r: dict[str, Any]) -> dict[str, Any]:
    weights, peak = r["weight_bytes"], r["peak_rss_bytes"]
    target = TARGET_RATIO * weights + ALLOWANCE_BYTES
    return {
        "code": label,
        "dtype": dtype,
        "device": "cpu",
        "weight_gb": round(weights / GB, 3),
        "import_rss_gb": round(r["import_rss_bytes"] / GB, 3),
        "peak_rss_gb": round(peak / GB, 3),
        "peak_over_weights": round(peak / weights, 3),
        "wait4_maxrss_gb": round(r["wait4_maxrss_bytes"] / GB, 3),
        "target_gb": round(target / GB, 3),
        "meets_target": peak <= target,
        "load_s": round(r["load_s"], 1),
        "param_dtypes": r["dtypes"],
        "src": str(Path(r["src"]).parent.parent),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=REPO / "src", help="ocrprune sources to measure")
    p.add_argument("--label", default="this checkout", help="name of the --src code in the table")
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--checkpoint", type=Path, default=None, help="reuse a folder written before")
    p.add_argument("--keep", action="store_true", help="keep the checkpoint folder it writes")
    p.add_argument(
        "--merge", action="store_true", help="add rows to <out>/load_memory.json, not replace them"
    )
    p.add_argument("--write-checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_checkpoint is not None:  # the child that writes the folder
        print(json.dumps(write_checkpoint(args.write_checkpoint, args.quick)))
        return
    started = time.time()
    written: dict[str, Any] = {}
    folder = args.checkpoint
    tmp = None
    if folder is None:
        tmp = Path(tempfile.mkdtemp(prefix="ocrprune-load-memory-"))
        folder = tmp / "checkpoint"
        folder.mkdir()
        size = "quick" if args.quick else "full-size"
        print(f"writing the {size} checkpoint to {folder}", file=sys.stderr)
        began = time.perf_counter()
        command = [sys.executable, __file__, "--write-checkpoint", str(folder)]
        command += ["--quick"] if args.quick else []
        done = subprocess.run(command, stdout=subprocess.PIPE, check=True)
        written = json.loads(done.stdout.decode().strip().splitlines()[-1])
        written["write_s"] = round(time.perf_counter() - began, 1)
    try:
        rows = []
        for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
            print(f"loading {dtype} with {args.src}", file=sys.stderr)
            rows.append(row(args.label, dtype, run_child(args.src.resolve(), folder, dtype)))
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"kept {folder}", file=sys.stderr)
    headers = ["code", "dtype", "weights GB", "imports GB", "peak RSS GB", "peak/weights"]
    headers += ["target GB", "meets", "load s"]
    print(
        table(
            headers,
            [
                [r[k] for k in ("code", "dtype", "weight_gb", "import_rss_gb", "peak_rss_gb")]
                + [r["peak_over_weights"], r["target_gb"], "yes" if r["meets_target"] else "NO"]
                + [r["load_s"]]
                for r in rows
            ],
        )
    )
    out_json = args.out / "load_memory.json"
    previous = json.loads(out_json.read_text()) if args.merge and out_json.exists() else {}
    payload = header(args, "load_memory", started) | {
        "target": f"peak RSS <= {TARGET_RATIO} x weight bytes + {ALLOWANCE_BYTES / GB:g} GB",
        "checkpoint": written or previous.get("checkpoint") or {"reused": str(folder)},
        "machine": machine(),
        "rows": previous.get("rows", []) + rows,
    }
    write_results(args.out, "load_memory", payload, None)


if __name__ == "__main__":
    main()
