"""What makes two runs' outputs the same (the resume key's options and the expected revision), and
what an earlier run already did for a document (skip it, or reuse its checkpointed pages).

A document is skipped on a re-run only when its manifest was written with the same input bytes, the
same options that change output (listed here, and nothing else: `--batch-size` or `-v` do not
change a page's text), and the same model id and revision.

The token cap (`--max-new-tokens`) is not part of the key: it is recorded per page instead
(`PAGE_CAP`), because it changes only pages that reached it. Decoding is greedy, so a page that
ended with end-of-sequence after G tokens reads the same under any cap above G; `page_reusable`
keeps such pages when the cap changes and redoes only the pages the cap could have changed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ocrprune.config import DEFAULT_MODEL, DEFAULT_REVISION, RunConfig, keep_label
from ocrprune.records import DocResult, PageResult, page_from_record
from ocrprune.run.document import DocState
from ocrprune.writers import files
from ocrprune.writers.document import PAGE_CAP, OutputSettings

log = logging.getLogger("ocrprune")
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


@dataclass(frozen=True)
class RunKey:
    """The parts of the resume key that are the same for every document of a run, resolved once
    (the dtype needs torch, or a Ray driver's view of its workers): with an input's digest they
    make the key a manifest and the page checkpoints are written under."""

    options: dict[str, Any]
    legacy_options: dict[str, Any]
    model: str
    revision: str | None

    @classmethod
    def for_run(cls, config: RunConfig, dtype: str) -> RunKey:
        return cls(output_options(config, dtype), legacy_options(config, dtype), config.model.model, expected_revision(config))

    def key(self, digest: str) -> dict[str, Any]:
        return files.manifest_key(digest, self.options, self.model, self.revision)

    def legacy_key(self, digest: str) -> dict[str, Any]:
        """The key a manifest of 0.1.0 (which held the token cap) has for the same input."""
        return files.manifest_key(digest, self.legacy_options, self.model, self.revision)

    def output_settings(self, config: RunConfig) -> OutputSettings:
        """What the writers need to write a document of this run."""
        return OutputSettings(
            formats=config.formats,
            page_separator=config.page_separator,
            options=self.options,
            model=self.model,
            revision=self.revision,
            max_new_tokens=config.generation.max_new_tokens,
        )


def already_done(state: DocState, manifest: dict[str, Any], run_key: RunKey, config: RunConfig) -> DocResult | None:
    """The document as its manifest recorded it if it is to be skipped, else None. Skipped
    when the manifest matches the key and its outputs are intact, and every recorded page
    stands under this run's token cap (see `page_reusable`); with `--retry-failed`, only if
    every page is `ok`. Manifests of 0.1.0, whose key held the cap, count when the cap is
    unchanged."""
    assert state.paths is not None
    formats, retry = config.formats, config.retry_failed
    if files.is_done(state.paths, state.key, formats, manifest):
        records = manifest.get("pages")
        cap = config.generation.max_new_tokens
        pages_stand = isinstance(records, list) and all(
            isinstance(r, dict) and page_reusable(r, cap, retry_failed=retry) for r in records
        )
    else:
        pages_stand = files.is_done(state.paths, run_key.legacy_key(state.digest), formats, manifest)
    if not pages_stand:
        return None
    recorded = recorded_document(state.shown, state.rel, manifest)
    return None if retry and not recorded.ok else recorded


def load_reuse(state: DocState, config: RunConfig) -> None:
    """Take the pages an earlier (interrupted, capped or partly failed) run checkpointed for this
    document that stand under this run's settings (`page_reusable`)."""
    assert state.paths is not None
    cap = config.generation.max_new_tokens
    for page_no, record in files.load_checkpoints(state.paths, state.key).items():
        try:
            page = page_from_record(record)
        except (KeyError, TypeError, ValueError):
            continue
        if not page_reusable(record, cap, retry_failed=config.retry_failed):
            continue
        state.reuse[page_no] = page
        recorded_cap = record.get(PAGE_CAP)
        state.caps[page_no] = recorded_cap if isinstance(recorded_cap, int) else cap
    if state.reuse:
        log.info("%s: resuming, %d page(s) already converted", state.shown, len(state.reuse))


def recorded_document(shown: str, rel: PurePosixPath, manifest: dict[str, Any]) -> DocResult:
    """A skipped document as its manifest recorded it (statuses and figures, no text)."""
    pages: list[PageResult] = []
    records = manifest.get("pages")
    statuses = manifest.get("page_statuses") or []
    try:
        if isinstance(records, list) and len(records) == len(statuses):
            pages = [page_from_record(r) for r in records]
        else:
            pages = [PageResult(page=n, status=s) for n, s in enumerate(statuses, start=1)]
    except (KeyError, TypeError, ValueError):
        pages = [PageResult(page=n, status="ok" if s == "ok" else "model_error") for n, s in enumerate(statuses, start=1)]
    return DocResult(
        source=shown,
        stem=rel.name,
        pages=tuple(pages),
        error=manifest.get("error"),
        error_kind=manifest.get("error_kind"),
        page_count=len(pages),
        skipped=True,
    )
