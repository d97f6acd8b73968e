"""What makes two runs' outputs the same: the resume key's options and the expected revision.

A document is skipped on a re-run only when its manifest was written with the same input bytes, the
same options that change output (listed here, and nothing else: `--batch-size` or `-v` do not
change a page's text), and the same model id and revision.
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_MODEL, DEFAULT_REVISION, RunConfig, keep_label


def output_options(config: RunConfig, dtype: str) -> dict[str, Any]:
    """The options that change a document's output: part of the resume manifest key."""
    gen, prune, raster = config.generation, config.prune, config.raster
    options: dict[str, Any] = {
        "mode": gen.mode,
        "prompt": gen.prompt,
        "max_new_tokens": gen.max_new_tokens,
        "ngram": [gen.ngram_size, gen.ngram_window],
        "keep": keep_label(prune.keep),
        "prune_method": prune.method,
        "seed": prune.seed if prune.method == "random" else None,
        "dpi": raster.dpi,
        "max_pixels": raster.max_pixels,
        "pages": [list(r) for r in raster.pages],
        "formats": sorted(config.formats),
        "page_separator": config.page_separator,
        "dtype": dtype,
        "model_seed": config.model.seed if config.model.is_tiny_random else None,
    }
    if config.engine != "hf":
        # vLLM decodes with compact positions and its own kernels, so its text may differ from
        # hf's. Left out for hf so that outputs written before engines existed stay valid.
        options["engine"] = config.engine
    return options


def expected_revision(config: RunConfig) -> str | None:
    """The revision a hub id resolves to without loading it (pinned default or --revision)."""
    if config.model.revision:
        return config.model.revision
    return DEFAULT_REVISION if config.model.model == DEFAULT_MODEL else None
