"""Where a page's time goes, per mode: preprocess, vision encode, prune, prefill, decode per token.

Runs the product's own `Engine` (the code `ocrprune convert` runs) on one rendered sample page with
the full-size random model: the vision encoder once per repeat, then decoding at keep 1.0 and 0.4
from the same features, each generating exactly `--tokens` tokens (end-of-sequence is banned so both
settings do the same work). One warm-up pass, then medians. It also projects a page of 1,000 output
tokens (encode + prune + prefill + 1,000 x decode per token), which is closer to a real page.

    python bench/breakdown.py           # full-size model (CPU: about 3-4 minutes)
    python bench/breakdown.py --quick   # tiny-random model, seconds (CI)
"""

from __future__ import annotations

import sys
import time

from charts import bar_chart
from common import (
    dtype_name,
    header,
    machine,
    make_guard,
    median,
    parser,
    ratio,
    table,
    write_results,
)
from fullsize import (
    add_model_options,
    ban_eos,
    kv_bytes_per_token,
    loaded_model,
    model_settings,
    sample_pages,
)

KEEPS = (1.0, 0.4)
PROJECTED_TOKENS = 1000
STAGES = ("preprocess_ms", "encode_ms", "prune_ms", "prefill_ms", "decode_ms")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    add_model_options(p)
    p.add_argument(
        "--tokens", type=int, default=None, help="tokens generated per page (default 32; quick 4)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats after the warm-up (default 2)"
    )
    args = p.parse_args(argv)
    from ocrprune.config import GenerationSettings, PruneConfig, keep_label
    from ocrprune.runtime.hf.engine import Engine

    device, dtype, modes = model_settings(args)
    tokens = args.tokens or (4 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    started = time.time()
    guard = make_guard(args, device)
    loaded, described = loaded_model(device, dtype, args.quick)
    ban_eos(loaded.model, loaded.eos_token_id)
    host = machine(device)
    print(
        f"breakdown: {host['summary']}; {device.type} {dtype_name(loaded.dtype)}; {described}",
        file=sys.stderr,
    )
    page = sample_pages(1)[0]
    kv_per_token = kv_bytes_per_token(loaded.model.config, loaded.dtype)
    rows = []
    for mode in modes:
        engine = Engine(
            loaded, GenerationSettings(mode=mode, max_new_tokens=tokens), PruneConfig(keep=1.0)
        )

        def sample(engine: Engine = engine) -> dict[str, object]:
            encoded = engine.encode([page])
            return {keep: engine.decode(encoded, prune=PruneConfig(keep=keep))[0] for keep in KEEPS}

        began = time.perf_counter()
        if not args.quick:
            sample()  # warm-up, not counted
        samples = [guard.measure(sample) for _ in range(repeats)]
        for keep in KEEPS:
            outs = [s[keep] for s in samples]
            row = {stage: median([getattr(o, stage) for o in outs]) for stage in STAGES}
            generated = outs[0].tokens.generated
            per_token = row["decode_ms"] / max(generated - 1, 1)
            fixed = row["preprocess_ms"] + row["encode_ms"] + row["prune_ms"] + row["prefill_ms"]
            rows.append(
                {
                    "mode": mode,
                    "keep": keep_label(keep),
                    "batch": 1,
                    "device": device.type,
                    "dtype": dtype_name(loaded.dtype),
                    **row,
                    "generated": generated,
                    "decode_ms_per_token": per_token,
                    "total_ms": fixed + row["decode_ms"],
                    "projected_total_ms": fixed + per_token * (PROJECTED_TOKENS - 1),
                    "prompt_tokens": outs[0].tokens.prompt,
                    "visual_kept": outs[0].tokens.visual_kept,
                    "visual_total": outs[0].tokens.visual_total,
                    "kv_cache_mb": outs[0].tokens.prompt * kv_per_token / 2**20,
                    "repeats": repeats,
                    "machine": host["summary"],
                }
            )
        base = rows[-len(KEEPS)]
        for row in rows[-len(KEEPS) :]:
            row["total_speedup"] = ratio(base["total_ms"], row["total_ms"])
            row["projected_speedup"] = ratio(base["projected_total_ms"], row["projected_total_ms"])
            row["prefill_speedup"] = ratio(base["prefill_ms"], row["prefill_ms"])
        print(f"  {mode}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)

    print(
        f"\nWhere one page's time goes ({device.type}, {dtype_name(loaded.dtype)}, batch 1, {tokens} tokens generated; "
        f"{host['summary']}); medians in ms"
    )
    print(
        table(
            [
                "mode",
                "keep",
                "prompt",
                "encode",
                "prune",
                "prefill",
                "decode/tok",
                f"total@{tokens}",
                "x",
                f"page@{PROJECTED_TOKENS}",
                "x",
                "KV MB",
            ],
            [
                [
                    r["mode"],
                    r["keep"],
                    r["prompt_tokens"],
                    r["encode_ms"],
                    r["prune_ms"],
                    r["prefill_ms"],
                    r["decode_ms_per_token"],
                    r["total_ms"],
                    f"{r['total_speedup']:.2f}x",
                    r["projected_total_ms"],
                    f"{r['projected_speedup']:.2f}x",
                    f"{r['kv_cache_mb']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    if args.quick:
        print("quick run: tiny-random model, the figures measure pipeline overhead only")
    payload = header(args, "breakdown", started) | {
        "machine": host,
        "device": device.type,
        "dtype": dtype_name(loaded.dtype),
        "model": described,
        "tokens_generated": tokens,
        "projected_tokens": PROJECTED_TOKENS,
        "timed": "the runtime Engine's own stage timings (runtime/engine.py): preprocess and encode once per page, "
        "prune per page, prefill = generate() start to the first logits, decode = the remaining steps",
        "kv_cache": f"{kv_per_token} bytes per prompt token ({dtype_name(loaded.dtype)})",
        "contention": guard.record(),
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    categories = [f"{r['mode']} {r['keep']}" for r in rows]
    stacks = {
        "preprocess + encode": [(r["preprocess_ms"] + r["encode_ms"]) / 1000 for r in rows],
        "prune": [r["prune_ms"] / 1000 for r in rows],
        "prefill": [r["prefill_ms"] / 1000 for r in rows],
        f"decode x {PROJECTED_TOKENS} tokens": [
            r["decode_ms_per_token"] * (PROJECTED_TOKENS - 1) / 1000 for r in rows
        ],
    }
    png = bar_chart(
        f"Projected time for one page of {PROJECTED_TOKENS} output tokens ({device.type}, {dtype_name(loaded.dtype)})",
        "seconds",
        categories,
        stacks,
    )
    write_results(args.out, "breakdown", payload, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
