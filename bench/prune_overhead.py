"""Pruning overhead: RTPrune's own time per page as a share of the prefill it shortens, per mode.

Prunes the structured feature block of one sample page (fullsize.py) with `rtprune.prune_image`
exactly as the runtime calls it (features in the model dtype on the device; norms, Sinkhorn and the
ratios in fp32), and times the full-size decoder's prefill of the unpruned and the pruned prompt
(batch 1) in the same run. Targets: under 5% of prefill on CPU for Large; under 2 ms per page on a GPU.

    python bench/prune_overhead.py          # full-size decoder (CPU: about 3 minutes)
    python bench/prune_overhead.py --quick  # toy widths, seconds (CI)
"""

from __future__ import annotations

import sys
import time

import torch
from charts import line_chart
from common import (
    dtype_name,
    header,
    machine,
    make_guard,
    median,
    parser,
    ratio,
    sync,
    table,
    write_results,
)
from fullsize import (
    add_model_options,
    build_model,
    decoder_batch,
    keep_key,
    model_settings,
    page_blocks,
    pruned_prompt,
    sample_pages,
    time_interleaved,
)

KEEPS = (0.84, 0.6, 0.4, "auto")


def prune_ms(block, keep, device: torch.device, dtype: torch.dtype, calls: int) -> list[float]:
    from ocrprune import rtprune

    features = block.features.to(device=device, dtype=dtype)
    view = block.global_view.to(device)
    times = []
    for _ in range(calls):
        sync(device)
        start = time.perf_counter()
        rtprune.prune_image(
            features, block.layout, keep, global_view=view if keep == "auto" else None
        )
        sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    add_model_options(p)
    p.add_argument(
        "--repeats", type=int, default=None, help="prefill repeats (default 5) and prune calls x4"
    )
    args = p.parse_args(argv)
    device, dtype, modes = model_settings(args)
    repeats = args.repeats or (1 if args.quick else 5)
    started = time.time()
    guard = make_guard(args, device)
    model, source = build_model(device, dtype, quick=args.quick)
    host = machine(device)
    print(
        f"prune_overhead: {host['summary']}; {device.type} {args.dtype}; {source}", file=sys.stderr
    )
    page = sample_pages(1)
    rows = []
    for mode in modes:
        block = page_blocks(page, mode, model.config.text_config.hidden_size)[0]
        prompts = {
            keep_key(k): pruned_prompt(model, block, k, device, dtype) for k in (1.0, *KEEPS)
        }
        timings = time_interleaved(
            model,
            {k: decoder_batch(model, [r]) for k, r in prompts.items()},
            device,
            repeats,
            guard,
            warmup=0 if args.quick else 1,
        )
        full_prefill = timings["1"][0]
        for keep in KEEPS:
            key = keep_key(keep)
            prune_ms(block, keep, device, dtype, 2)  # warm-up
            pruning = median(
                guard.measure(lambda k=keep, b=block: prune_ms(b, k, device, dtype, 4 * repeats))
            )
            prefill = timings[key][0]
            rows.append(
                {
                    "mode": mode,
                    "keep": key,
                    "batch": 1,
                    "device": device.type,
                    "dtype": dtype_name(dtype),
                    "visual_total": prompts[key].visual_total,
                    "visual_kept": prompts[key].visual_kept,
                    "prune_ms": pruning,
                    "prefill_ms": prefill,
                    "prefill_ms_unpruned": full_prefill,
                    "prefill_speedup": ratio(full_prefill, prefill),
                    "prune_share_of_prefill": pruning / prefill,
                    "prune_share_of_saving": pruning / (full_prefill - prefill)
                    if full_prefill > prefill
                    else None,
                    "machine": host["summary"],
                }
            )
        print(f"  {mode} done", file=sys.stderr, flush=True)

    print(
        f"\nPruning overhead ({device.type}, {dtype_name(dtype)}, batch 1; {host['summary']}); medians"
    )
    print(
        table(
            [
                "mode",
                "keep",
                "kept/total",
                "prune ms",
                "prefill ms",
                "unpruned ms",
                "prune/prefill",
                "prune/saved",
            ],
            [
                [
                    r["mode"],
                    r["keep"],
                    f"{r['visual_kept']}/{r['visual_total']}",
                    r["prune_ms"],
                    r["prefill_ms"],
                    r["prefill_ms_unpruned"],
                    f"{100 * r['prune_share_of_prefill']:.1f}%",
                    "-"
                    if r["prune_share_of_saving"] is None
                    else f"{100 * r['prune_share_of_saving']:.1f}%",
                ]
                for r in rows
            ],
        )
    )
    if args.quick:
        print("quick run: toy widths, the figures measure nothing")
    else:
        for r in rows:
            if r["mode"] == "large":
                target = (
                    (r["prune_ms"] < 2.0)
                    if device.type == "cuda"
                    else (r["prune_share_of_prefill"] < 0.05)
                )
                rule = "< 2 ms" if device.type == "cuda" else "< 5% of prefill"
                print(
                    f"target: large keep {r['keep']}: {r['prune_ms']:.1f} ms = {100 * r['prune_share_of_prefill']:.1f}% "
                    f"of prefill ({rule}: {'met' if target else 'NOT met'})"
                )
    payload = header(args, "prune_overhead", started) | {
        "machine": host,
        "device": device.type,
        "dtype": dtype_name(dtype),
        "model": f"decoder of the random-weight model; {source}",
        "timed": "prune = rtprune.prune_image on one page (stage 1, OT merge, newline collapse; auto adds the "
        "Sobel density and the N x N similarity); prefill = decoder layers, batch 1",
        "contention": guard.record(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    series = {
        key: [
            (i, 100 * r["prune_share_of_prefill"])
            for i, m in enumerate(modes)
            for r in rows
            if r["mode"] == m and r["keep"] == key
        ]
        for key in [keep_key(k) for k in KEEPS]
    }
    png = line_chart(
        f"Prune time as % of (pruned) prefill ({device.type}, {dtype_name(dtype)})",
        "mode",
        "prune / prefill (%)",
        {f"keep {k}": v for k, v in series.items()},
        x_names=modes,
        hline=(5.0, "5% target (CPU)"),
    )
    write_results(args.out, "prune_overhead", payload, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
