"""Decoder prefill and first decode step vs keep ratio, per mode, at batch 1 and 8.

Full-size DeepSeek-OCR decoder with random weights (same FLOPs as the released model; see
fullsize.py), prompts pruned by `rtprune.prune_image` from structured features of real sample pages,
gapped position ids as the runtime uses, left-padded batches. Each (mode, batch) measures every keep
setting in turn within each repeat, after one warm-up pass, and reports medians; speedups are ratios
to keep 1.0 measured in the same run.

    python bench/prefill.py            # full run (CPU, 2 cores: about 15-18 minutes)
    python bench/prefill.py --quick    # toy widths, seconds (CI)
"""

from __future__ import annotations

import sys
import time

from charts import line_chart
from common import (
    dtype_name,
    header,
    machine,
    make_guard,
    parser,
    ratio,
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

KEEPS = (1.0, 0.84, 0.6, 0.4, "auto")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    add_model_options(p)
    p.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default 1,8; quick 1,2)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 5 at batch 1, 3 above)"
    )
    args = p.parse_args(argv)
    device, dtype, modes = model_settings(args)
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,8")).split(",")]
    started = time.time()
    guard = make_guard(args, device)
    model, source = build_model(device, dtype, quick=args.quick)
    hidden = model.config.text_config.hidden_size
    host = machine(device)
    print(f"prefill: {host['summary']}; {device.type} {args.dtype}; {source}", file=sys.stderr)
    pages = sample_pages(max(batches))
    rows = []
    for mode in modes:
        blocks = page_blocks(pages, mode, hidden)
        for batch in batches:
            prompts = {
                keep_key(k): [
                    pruned_prompt(model, blocks[i], k, device, dtype) for i in range(batch)
                ]
                for k in KEEPS
            }
            inputs = {
                key: decoder_batch(model, prompt_rows) for key, prompt_rows in prompts.items()
            }
            repeats = args.repeats or (1 if args.quick else (5 if batch == 1 else 3))
            began = time.perf_counter()
            timings = time_interleaved(
                model, inputs, device, repeats, guard, warmup=0 if args.quick else 1
            )
            base_prefill, base_decode = timings["1"]
            for key, (prefill_ms, decode_ms) in timings.items():
                group = prompts[key]
                rows.append(
                    {
                        "mode": mode,
                        "keep": key,
                        "batch": batch,
                        "device": device.type,
                        "dtype": dtype_name(dtype),
                        "prompt_tokens": sum(r.embeds.shape[0] for r in group) / batch,
                        "prompt_tokens_unpruned": sum(r.next_position for r in group) / batch,
                        "visual_total": sum(r.visual_total for r in group) / batch,
                        "visual_kept": sum(r.visual_kept for r in group) / batch,
                        "keep_ratio": sum(r.ratio for r in group) / batch,
                        "prefill_ms": prefill_ms,
                        "prefill_ms_per_page": prefill_ms / batch,
                        "prefill_speedup": ratio(base_prefill, prefill_ms),
                        "decode_ms": decode_ms,
                        "decode_speedup": ratio(base_decode, decode_ms),
                        "token_ratio": sum(r.next_position for r in group)
                        / sum(r.embeds.shape[0] for r in group),
                        "repeats": repeats,
                        "machine": host["summary"],
                    }
                )
            print(
                f"  {mode} batch {batch}: {time.perf_counter() - began:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    headers = [
        "mode",
        "batch",
        "keep",
        "kept/total",
        "prompt",
        "prefill ms",
        "x vs 1.0",
        "tok ratio",
        "decode ms",
        "x vs 1.0",
    ]
    print(
        f"\nDecoder prefill and first decode step ({device.type}, {dtype_name(dtype)}; {host['summary']}); medians, ms per batch"
    )
    print(
        table(
            headers,
            [
                [
                    r["mode"],
                    r["batch"],
                    r["keep"],
                    f"{r['visual_kept']:.0f}/{r['visual_total']:.0f}",
                    f"{r['prompt_tokens']:.0f}",
                    r["prefill_ms"],
                    f"{r['prefill_speedup']:.2f}x",
                    f"{r['token_ratio']:.2f}",
                    r["decode_ms"],
                    f"{r['decode_speedup']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    if args.quick:
        print("quick run: toy widths, the figures measure nothing")
    large = [r for r in rows if r["mode"] == "large" and r["keep"] == "0.4" and not args.quick]
    for r in large:
        verdict = "met" if r["prefill_speedup"] >= 2.0 else "NOT met"
        print(
            f"target: large, keep 0.4, batch {r['batch']}: prefill {r['prefill_speedup']:.2f}x (>= 2.0x {verdict})"
        )
    payload = header(args, "prefill", started) | {
        "machine": host,
        "device": device.type,
        "dtype": dtype_name(dtype),
        "model": f"UnlimitedOcrForConditionalGeneration, random weights; {source}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "timed": "decoder layers and final norm (the LM head is excluded, as in the paper); prefill of the "
        "whole left-padded batch, then one decode step with the KV cache",
        "features": "random but structured per page (fullsize.py): auto's r_txt is real, its r_sim synthetic",
        "contention": guard.record(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    series = {
        f"{m} b{b}": [
            (r["visual_kept"] / r["visual_total"], r["prefill_speedup"])
            for r in rows
            if r["mode"] == m and r["batch"] == b
        ]
        for m in modes
        for b in batches
    }
    png = line_chart(
        f"Prefill speedup vs share of visual tokens kept ({device.type}, {dtype_name(dtype)})",
        "visual tokens kept (share)",
        "prefill speedup vs keep 1.0",
        series,
        hline=(2.0, "target 2.0x (large, keep 0.4)"),
    )
    write_results(args.out, "prefill", payload, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
