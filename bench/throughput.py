"""End-to-end throughput of the conversion pipeline: pages/s at keep 1.0 vs keep 0.4.

Runs `ocrprune.run.local.run` (what `ocrprune convert` runs after parsing flags: streaming raster,
batching, engine, post-processing, atomic writers, run report) over a folder of generated PDFs. The
model is loaded once and shared by both settings; end-of-sequence is banned so every page
generates exactly `--tokens` tokens and both settings do the same decoding work. Settings alternate
within each repeat after a warm-up run; medians.

On CPU the model is the tiny-random one, so this measures the pipeline's own overhead (rendering,
preprocessing, pruning, writing), not the model. On CUDA it is the full-size random model in bf16.

    python bench/throughput.py          # CPU: about 3 minutes
    python bench/throughput.py --quick  # seconds (CI)
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from charts import bar_chart
from common import (
    dtype_name,
    header,
    machine,
    make_guard,
    median,
    parser,
    pick_device,
    ratio,
    table,
    write_pdf,
    write_results,
)
from fullsize import ban_eos, loaded_model

KEEPS = (1.0, 0.4)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode", default=None, help="resolution mode (default gundam, as convert; quick tiny)"
    )
    p.add_argument("--docs", type=int, default=None, help="generated PDFs (default 8; quick 1)")
    p.add_argument("--pages", type=int, default=None, help="pages per PDF (default 5; quick 2)")
    p.add_argument(
        "--tokens", type=int, default=None, help="tokens generated per page (default 16; quick 2)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="pages per batch (default 1 on CPU, 8 on CUDA)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per setting (default 3)")
    args = p.parse_args(argv)
    import ocrprune.run as runner
    from ocrprune import __version__
    from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RunConfig, keep_label
    from ocrprune.records import RunInfo
    from ocrprune.runtime.hf.engine import Engine

    logging.getLogger("ocrprune").setLevel(
        logging.ERROR
    )  # every page ends at the token limit on purpose
    device = pick_device(args.device)
    docs, pages = args.docs or (1 if args.quick else 8), args.pages or (2 if args.quick else 5)
    tokens = args.tokens or (2 if args.quick else 16)
    repeats = args.repeats or (1 if args.quick else 3)
    batch = args.batch_size or (8 if device.type == "cuda" else 1)
    args.mode = args.mode or ("tiny" if args.quick else "gundam")
    started = time.time()
    guard = make_guard(args, device)
    full_size = device.type == "cuda" and not args.quick
    dtype = torch.bfloat16 if full_size else torch.float32
    loaded, described = loaded_model(device, dtype, quick=not full_size)
    ban_eos(loaded.model, loaded.eos_token_id)
    host = machine(device)
    print(
        f"throughput: {host['summary']}; {device.type} {dtype_name(dtype)}; {described}",
        file=sys.stderr,
    )
    settings = GenerationSettings(mode=args.mode, max_new_tokens=tokens)
    with tempfile.TemporaryDirectory(prefix="ocrprune-bench-") as tmp:
        folder = Path(tmp) / "docs"
        for i in range(docs):
            write_pdf(folder / f"doc{i:02d}.pdf", pages, seed=i)

        def run(keep: float, inputs: tuple[str, ...], name: str) -> dict[str, float]:
            prune = PruneConfig(keep=keep)
            info = RunInfo(
                model=loaded.model_id,
                revision=None,
                mode=args.mode,
                keep=keep_label(keep),
                prune_method="rtprune",
                prompt=settings.prompt,
                device=device.type,
                dtype=dtype_name(dtype),
                dummy_model=True,
                version=__version__,
            )
            config = RunConfig(
                inputs=inputs,
                out=Path(tmp) / name,
                model=ModelConfig(model="tiny-random", device=device.type),
                prune=prune,
                generation=settings,
                batch_size=batch,
                force=True,
            )
            begin = time.perf_counter()
            outcome = runner.run(
                config, engine_factory=lambda: (Engine(loaded, settings, prune), info, batch)
            )
            wall = time.perf_counter() - begin
            report = outcome.report or {}
            assert report["pages"]["timed"] == report["pages"]["total"], (
                "a page failed; see the run report"
            )
            means = {f"{s}_ms": v["mean"] for s, v in report["stages_ms"].items()}
            return {
                "wall_s": wall,
                "pages": report["pages"]["total"],
                "generated": report["generated_tokens"],
                **means,
            }

        run(1.0, (str(folder / "doc00.pdf"),), "warmup")  # warm-up, not counted
        samples: dict[float, list[dict[str, float]]] = {k: [] for k in KEEPS}
        for rep in range(repeats):
            for keep in KEEPS:
                samples[keep].append(
                    guard.measure(lambda k=keep, r=rep: run(k, (str(folder),), f"run{r}-{k:g}"))
                )
    rows = []
    for keep in KEEPS:
        runs = samples[keep]
        wall = median([r["wall_s"] for r in runs])
        n = int(runs[0]["pages"])
        rows.append(
            {
                "mode": args.mode,
                "keep": keep_label(keep),
                "batch": batch,
                "device": device.type,
                "dtype": dtype_name(dtype),
                "pages": n,
                "tokens_per_page": tokens,
                "wall_s": wall,
                "pages_per_s": n / wall,
                "generated_tokens_per_s": runs[0]["generated"] / wall,
                **{k: median([r[k] for r in runs]) for k in runs[0] if k.endswith("_ms")},
                "repeats": repeats,
                "machine": host["summary"],
            }
        )
    for row in rows:
        row["speedup"] = ratio(rows[0]["wall_s"], row["wall_s"])
    print(
        f"\nEnd-to-end throughput ({described}; {device.type}, {dtype_name(dtype)}, mode {args.mode}, batch {batch}, "
        f"{tokens} tokens per page; {host['summary']}); medians of {repeats}"
    )
    stages = ["render_ms", "preprocess_ms", "encode_ms", "prune_ms", "prefill_ms", "decode_ms"]
    print(
        table(
            [
                "keep",
                "pages",
                "wall s",
                "pages/s",
                "x vs 1.0",
                *[s[:-3] + " ms/page" for s in stages],
            ],
            [
                [
                    r["keep"],
                    r["pages"],
                    r["wall_s"],
                    r["pages_per_s"],
                    f"{r['speedup']:.2f}x",
                    *[r[s] for s in stages],
                ]
                for r in rows
            ],
        )
    )
    if not full_size:
        print(
            "tiny-random model: these figures are the pipeline's own overhead, not DeepSeek-OCR's speed"
        )
    payload = header(args, "throughput", started) | {
        "machine": host,
        "device": device.type,
        "dtype": dtype_name(dtype),
        "model": described,
        "mode": args.mode,
        "timed": "wall time of runner.run over the folder (rendering, preprocessing, model, post-processing, writing); "
        "model loading excluded; stage columns are the run report's per-page means",
        "contention": guard.record(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    png = bar_chart(
        f"Mean time per page by stage ({described.split(' (')[0]}, {device.type}, mode {args.mode})",
        "ms per page",
        [f"keep {r['keep']}: {r['pages_per_s']:.2f} pages/s" for r in rows],
        {s[:-3]: [r[s] for r in rows] for s in stages},
    )
    write_results(args.out, "throughput", payload, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
