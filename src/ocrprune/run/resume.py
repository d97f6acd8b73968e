"""What makes two runs' outputs the same: the resume key's options and the expected revision.

A document is skipped on a re-run only when its manifest was written with the same input bytes, the
same options that change output (listed here, and nothing else: `--batch-size` or `-v` do not
change a page's text), and the same model id and revision.

The token cap (`--max-new-tokens`) is not part of the key: it is recorded per page instead
(`PAGE_CAP`), because it changes only pages that reached it. Decoding is greedy, so a page that
ended with end-of-sequence after G tokens reads the same under any cap above G; `page_reusable`
keeps such pages when the cap changes and redoes only the pages the cap could have changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ocrprune.config import DEFAULT_MODEL, DEFAULT_REVISION, RunConfig, keep_label

# The key under which page checkpoints and manifest page records keep the token cap they ran with.
PAGE_CAP = "max_new_tokens"
# Statuses the token cap cannot change: the renderer's failures (an `ok` page is checked apart).
_CAP_INDEPENDENT = ("render_error",)


def output_options(config: RunConfig, dtype: str) -> dict[str, Any]:
    """The options that change a document's output: part of the resume manifest key (the token
    cap is recorded per page instead; see the module docstring)."""
    gen, prune, raster = config.generation, config.prune, config.raster
    options: dict[str, Any] = {
        "mode": gen.mode,
        "prompt": gen.prompt,
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


def legacy_options(config: RunConfig, dtype: str) -> dict[str, Any]:
    """The key options of manifests written before the cap left the key (0.1.0 and earlier), so
    their documents stay done when nothing else changed."""
    return output_options(config, dtype) | {"max_new_tokens": config.generation.max_new_tokens}


def page_reusable(record: Mapping[str, Any], cap: int, *, retry_failed: bool) -> bool:
    """May a page recorded by an earlier run (checkpoint or manifest record) stand in this run?

    Under the same cap, yes (unless `--retry-failed` and it is not `ok`). Under another cap,
    only if the cap could not change it: an `ok` page that generated fewer tokens than the new
    cap (greedy decoding gives the same tokens up to its end-of-sequence), or a render failure.
    A record without a cap (written before caps were recorded) counts as made under this cap."""
    status = record.get("status")
    if retry_failed and status != "ok":
        return False
    recorded = record.get(PAGE_CAP, cap)
    if recorded == cap:
        return True
    if status == "ok":
        tokens = record.get("tokens")
        generated = tokens.get("generated") if isinstance(tokens, Mapping) else None
        return isinstance(generated, int) and generated < cap
    return status in _CAP_INDEPENDENT


def expected_revision(config: RunConfig) -> str | None:
    """The revision a hub id resolves to without loading it (pinned default or --revision)."""
    if config.model.revision:
        return config.model.revision
    return DEFAULT_REVISION if config.model.model == DEFAULT_MODEL else None
