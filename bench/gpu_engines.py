"""hf vs vllm on one GPU: pages/s and generated tokens/s by keep setting and pages in flight.

Each measurement runs one engine's `run` (what `ocrprune convert` calls per batch: preprocess,
vision encoder, RTPrune, decoding) over N pages at once: N = 16, 64, 256 pages in flight, at keep
1.0, 0.84, 0.4 and auto. End-of-sequence is disabled so every page generates exactly `--tokens`
tokens and both engines do the same decoding work. `hf` runs one left-padded `generate` per batch
(a batch that runs out of memory is split by the shared batch driver, as `convert` does; the row
says how many calls it took); `vllm` submits the N pruned prompts as `prompt_embeds` requests to
one `LLM.generate` and lets continuous batching schedule them.

Full run (one CUDA GPU, vLLM installed: `pip install 'ocrprune[vllm]'`): the full-size
DeepSeek-OCR architecture with random weights, bf16; vLLM loads the same architecture with
`load_format="dummy"` (random weights, no download) from `--model-dir`, a folder with DeepSeek-OCR's
`config.json` and tokenizer files (default `../shared/deepseek-ocr`). Random weights make the text
meaningless; the timings are the architecture's.

    python bench/gpu_engines.py                 # one CUDA GPU; not yet measured (aimed at < 10 min)
    python bench/gpu_engines.py --engines hf    # without vLLM
    python bench/gpu_engines.py --quick         # CPU, seconds: tiny model, a fake vLLM (CI)

`--quick` proves the script and the vllm engine's plumbing still work: the tiny-random model, and
in place of vLLM a stand-in `LLM` that decodes each `prompt_embeds` request with HF `generate`.
It measures nothing.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from charts import line_chart
from common import REPO, dtype_name, header, machine, parser, pick_device, table, write_results
from fullsize import ban_eos, loaded_model, sample_pages

KEEPS: tuple[Any, ...] = (1.0, 0.84, 0.4, "auto")
IN_FLIGHT = (16, 64, 256)
DEFAULT_MODEL_DIR = REPO.parent / "shared" / "deepseek-ocr"


# ---- a stand-in for vLLM on the CPU (--quick) --------------------------------------------------------


@dataclass
class StandInSampling:
    """The fields of `vllm.SamplingParams` the stand-in honours."""

    max_tokens: int = 16
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    extra: dict[str, Any] | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.max_tokens = int(kwargs.pop("max_tokens", 16))
        self.ignore_eos = bool(kwargs.pop("ignore_eos", False))
        self.stop_token_ids = kwargs.pop("stop_token_ids", None)
        self.extra = kwargs


class StandInLLM:
    """`LLM.generate` over `prompt_embeds` requests, decoded one by one with HF `generate` at
    compact positions (what vLLM does, slowly). For `--quick` only."""

    def __init__(self, loaded: Any) -> None:
        self.loaded = loaded

    @torch.inference_mode()
    def generate(
        self, prompts: list[dict[str, Any]], params: list[StandInSampling], use_tqdm: bool = True
    ) -> list[Any]:
        from types import SimpleNamespace

        from transformers import GenerationConfig

        loaded = self.loaded
        results = []
        for prompt, sp in zip(prompts, params):
            embeds = prompt["prompt_embeds"].to(loaded.device).unsqueeze(0)
            n = embeds.shape[1]
            config = GenerationConfig(
                do_sample=False,
                max_new_tokens=sp.max_tokens,
                min_new_tokens=sp.max_tokens if sp.ignore_eos else 0,
                eos_token_id=loaded.eos_token_id,
                pad_token_id=loaded.pad_token_id,
            )
            ids = loaded.model.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(1, n, dtype=torch.long, device=loaded.device),
                position_ids=torch.arange(n, device=loaded.device).unsqueeze(0),
                generation_config=config,
            )[0].tolist()
            reason = (
                "stop" if ids and ids[-1] == loaded.eos_token_id and not sp.ignore_eos else "length"
            )
            results.append(
                SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason=reason)])
            )
        return results


# ---- engines ---------------------------------------------------------------------------------------


def hf_runner(loaded: Any, mode: str, tokens: int) -> Any:
    from ocrprune.config import GenerationSettings, PruneConfig
    from ocrprune.runtime.hf.engine import Engine

    settings = GenerationSettings(mode=mode, max_new_tokens=tokens)
    return lambda keep: Engine(loaded, settings, PruneConfig(keep=keep))


def vllm_runner(
    loaded: Any, mode: str, tokens: int, quick: bool, model_dir: Path, utilization: float
) -> Any:
    from ocrprune.config import GenerationSettings, PruneConfig
    from ocrprune.runtime.hf.engine import Engine
    from ocrprune.runtime.vllm.engine import VllmEngine, import_vllm, ngram_processor

    settings = GenerationSettings(mode=mode, max_new_tokens=tokens)
    if quick:
        llm, sampling = StandInLLM(loaded), StandInSampling
    else:
        vllm = import_vllm()
        if not (model_dir / "config.json").exists():
            raise SystemExit(
                f"--model-dir {model_dir}: no config.json (a DeepSeek-OCR snapshot folder is needed)"
            )
        llm = vllm.LLM(
            model=str(model_dir),
            load_format="dummy",  # random weights of the real architecture, as the hf side has
            dtype="bfloat16",
            max_model_len=settings.max_positions,
            enable_prompt_embeds=True,
            enable_prefix_caching=False,
            limit_mm_per_prompt={"image": 0},
            logits_processors=[ngram_processor()],
            gpu_memory_utilization=utilization,
        )
        sampling = vllm.SamplingParams

    def build(keep: Any) -> Any:
        hf = Engine(loaded, settings, PruneConfig(keep=keep))
        return VllmEngine(hf, llm, sampling, sampling_extra={"ignore_eos": True})

    return build


# ---- measuring -------------------------------------------------------------------------------------


def measure(engine: Any, pages: list[Any], device: torch.device) -> dict[str, Any]:
    """Wall time of the shared batch driver running all `pages` as one batch on `engine`."""
    from ocrprune.run.batching import BatchFailure, run_split

    calls: list[int] = []
    outputs: list[Any] = []

    def run(batch: list[Any]) -> list[Any]:
        calls.append(len(batch))
        return engine.run(batch)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_split(pages, run, lambda _page, out: outputs.append(out), engine.recover)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    failed = [o for o in outputs if isinstance(o, BatchFailure)]
    done = [o for o in outputs if not isinstance(o, BatchFailure)]
    generated = sum(o.tokens.generated for o in done)
    row: dict[str, Any] = {
        "pages": len(pages),
        "failed": len(failed),
        "calls": len(calls),
        "wall_s": wall,
        "pages_per_s": len(done) / wall,
        "generated_tokens": generated,
        "generated_tokens_per_s": generated / wall,
        "visual_kept_share": sum(o.tokens.visual_kept for o in done)
        / max(1, sum(o.tokens.visual_total for o in done)),
        "prompt_tokens_mean": sum(o.tokens.prompt for o in done) / max(1, len(done)),
        "peak_gpu_mb": None,
        "device_used_mb": None,
    }
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20  # this process
        row["device_used_mb"] = (
            total - free
        ) / 2**20  # whole device, vLLM's engine process included
    return row


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    p.add_argument("--mode", default=None, help="resolution mode (default gundam; quick tiny)")
    p.add_argument(
        "--tokens", type=int, default=None, help="tokens generated per page (default 128; quick 3)"
    )
    p.add_argument(
        "--in-flight",
        default=None,
        help="pages per run, comma-separated (default 16,64,256; quick 2,3)",
    )
    p.add_argument(
        "--keeps", default=None, help="keep settings (default 1,0.84,0.4,auto; quick 1,0.4,auto)"
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        default=DEFAULT_MODEL_DIR,
        help="DeepSeek-OCR config + tokenizer for vLLM",
    )
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=0.6,
        help="share of GPU memory vLLM may take (default 0.6)",
    )
    args = p.parse_args(argv)
    from ocrprune.config import keep_label, parse_keep

    logging.getLogger("ocrprune").setLevel(
        logging.ERROR
    )  # every page ends at the token cap on purpose
    started = time.time()
    device = pick_device("cpu" if args.quick else args.device)
    full_size = device.type == "cuda" and not args.quick
    dtype = torch.bfloat16 if full_size else torch.float32
    mode = args.mode or ("tiny" if args.quick else "gundam")
    tokens = args.tokens or (3 if args.quick else 128)
    in_flight = [
        int(n)
        for n in (args.in_flight or ("2,3" if args.quick else ",".join(map(str, IN_FLIGHT)))).split(
            ","
        )
    ]
    keeps = [
        parse_keep(k)
        for k in (args.keeps or ("1,0.4,auto" if args.quick else "1,0.84,0.4,auto")).split(",")
    ]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    loaded, described = loaded_model(device, dtype, quick=not full_size)
    ban_eos(loaded.model, loaded.eos_token_id)  # hf: exactly `tokens` per page; vllm: ignore_eos
    host = machine(device)
    print(
        f"gpu_engines: {host['summary']}; {device.type} {dtype_name(dtype)}; {described}",
        file=sys.stderr,
    )
    pages = sample_pages(max(in_flight), dpi=144)
    rows: list[dict[str, Any]] = []
    for name in engines:
        if name == "hf":
            build = hf_runner(loaded, mode, tokens)
        elif name == "vllm":
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            build = vllm_runner(loaded, mode, tokens, args.quick, args.model_dir, args.gpu_memory)
        else:
            raise SystemExit(f"unknown engine {name!r}")
        measure(
            build(1.0), pages[:2], device
        )  # warm-up (kernels, allocator, vLLM graphs): not counted
        for keep in keeps:
            for n in in_flight:
                row = measure(build(keep), pages[:n], device)
                rows.append({"engine": name, "keep": keep_label(keep), "in_flight": n, "mode": mode,
                             "tokens_per_page": tokens, "device": device.type, "dtype": dtype_name(dtype),
                             **row, "machine": host["summary"]})  # fmt: skip
                print(
                    f"  {name} keep {keep_label(keep)} x{n}: {row['pages_per_s']:.2f} pages/s",
                    file=sys.stderr,
                )
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["engine"] == "hf"
                and r["keep"] == row["keep"]
                and r["in_flight"] == row["in_flight"]
            ),
            None,
        )
        row["speedup_vs_hf"] = (
            row["pages_per_s"] / base["pages_per_s"] if base and base["pages_per_s"] else None
        )
    print(
        f"\nhf vs vllm ({described}; {device.type}, {dtype_name(dtype)}, mode {mode}, {tokens} tokens per page)"
    )
    print(
        table(
            [
                "engine",
                "keep",
                "in flight",
                "calls",
                "pages/s",
                "tokens/s",
                "x vs hf",
                "peak MB",
                "device MB",
            ],
            [
                [
                    r["engine"],
                    r["keep"],
                    r["in_flight"],
                    r["calls"],
                    r["pages_per_s"],
                    r["generated_tokens_per_s"],
                    r["speedup_vs_hf"],
                    r["peak_gpu_mb"],
                    r["device_used_mb"],
                ]
                for r in rows
            ],
        )
    )
    if not full_size:
        print("quick: tiny-random model and a stand-in for vLLM; these figures measure nothing")
    payload = header(args, "gpu_engines", started) | {
        "machine": host,
        "device": device.type,
        "dtype": dtype_name(dtype),
        "model": described,
        "vllm": "stand-in (HF generate on prompt_embeds)"
        if args.quick
        else "vllm, load_format=dummy",
        "mode": mode,
        "timed": "wall time of one engine's run over N pages through the shared batch driver (preprocess, "
        "vision encoder, RTPrune, decoding); pages are pre-rendered; EOS disabled, so every page "
        "generates tokens_per_page tokens",
        "positions": {"hf": "gapped", "vllm": "compact"},
        "wall_s": round(time.time() - started, 1),
        "rows": rows,
    }
    series = {
        f"{e} keep {k}": [
            (float(r["in_flight"]), r["pages_per_s"])
            for r in rows
            if r["engine"] == e and r["keep"] == k
        ]
        for e in engines
        for k in [keep_label(k) for k in keeps]
    }
    png = line_chart(
        f"Pages/s by pages in flight ({'quick, meaningless' if not full_size else described.split(' (')[0]}, mode {mode})",
        "pages in flight",
        "pages/s",
        series,
    )
    write_results(args.out, "gpu_engines", payload, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
