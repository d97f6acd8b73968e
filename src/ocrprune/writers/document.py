"""One finished document on its way out: rendered (Markdown, JSON), described by its manifest and
written atomically under `--out`, or rendered for `--stdout`.

Why here and not in the run: the manifest's schema, the page records it keeps (with the token cap
each page ran under, `PAGE_CAP`) and the order of the writes are the writers' business; the run
only says which document, where, and under which resume key. Standard library only (no torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ocrprune.names import escape_name
from ocrprune.records import DocResult, PageResult, RunInfo, page_to_record
from ocrprune.writers import files
from ocrprune.writers.json import render_json, render_jsonl
from ocrprune.writers.markdown import render_markdown

log = logging.getLogger("ocrprune")

# The key under which page checkpoints and manifest page records keep the token cap they ran with.
PAGE_CAP = "max_new_tokens"


@dataclass(frozen=True)
class OutputSettings:
    """What every document of a run is written with: its formats, and the resume key's parts a
    manifest records (options, model id and revision). `max_new_tokens` is the cap a page ran
    under unless it was taken from an earlier run (see `DocTarget.caps`)."""

    formats: tuple[str, ...]
    page_separator: str
    options: Mapping[str, Any]
    model: str
    revision: str | None
    max_new_tokens: int


@dataclass(frozen=True)
class DocTarget:
    """Where one document goes and what its manifest says about its input: `name` is its output
    name (figures go to `<name>_images/`), `source` its display name, `source_path` the escaped
    input path that owns the name, `caps` the token cap of each page reused from an earlier run."""

    paths: files.DocPaths
    name: str
    source: str
    source_path: str
    digest: str
    caps: Mapping[int, int] = field(default_factory=dict)


def source_path(path: str | os.PathLike[str]) -> str:
    """How a manifest names the input that owns an output name (escaped, normalized)."""
    return escape_name(os.path.normpath(path))


def page_record(page: PageResult, cap: int, *, full: bool) -> dict[str, Any]:
    """A page's checkpoint (`full`) or manifest record, with the token cap it was produced under."""
    return page_to_record(page, full=full) | {PAGE_CAP: cap}


def save_page(paths: files.DocPaths, key: Mapping[str, Any], page: PageResult, cap: int) -> None:
    """Checkpoint one finished page under `.ocrprune/`, so a re-run never redoes it."""
    files.save_checkpoint(paths, key, page_record(page, cap, full=True))


def manifest(result: DocResult, target: DocTarget, settings: OutputSettings) -> dict[str, Any]:
    """The manifest of a document (before its outputs are listed): the key a re-run is checked
    against, and compact page records (statuses, tokens, timings; no text)."""
    cap = settings.max_new_tokens
    return files.manifest_for(
        target.digest,
        settings.options,
        settings.model,
        settings.revision,
        [p.status for p in result.pages],
        source=target.source,
        source_path=target.source_path,
        pages=[page_record(p, target.caps.get(p.page, cap), full=False) for p in result.pages],
        error=result.error,
        error_kind=result.error_kind,
    )


def write(result: DocResult, target: DocTarget, settings: OutputSettings, info: RunInfo) -> None:
    """The document's files, then its manifest (written last, atomically); the page checkpoints
    go once the document is all `ok`. UnsafeOutputError if a path of it is a planted link."""
    image_dir = f"{target.name}_images"
    formats = settings.formats
    markdown = (
        render_markdown(result, page_separator=settings.page_separator, image_dir=image_dir)
        if "md" in formats
        else None
    )
    json_text = render_json(result, info, image_dir=image_dir) if "json" in formats else None
    figures = [f for page in result.pages for f in page.figures]
    files.write_document(target.paths, markdown, json_text, figures, manifest(result, target, settings))
    if result.ok:
        files.clear_checkpoints(target.paths)
    log.debug("wrote %s", target.paths.md if markdown is not None else target.paths.json)


def forget_old_outputs(paths: files.DocPaths, shown: str, digest: str) -> None:
    """An input that converted once and now fails to open: remove its old outputs only if its
    bytes changed since (old text is never taken for new). Outputs of the same bytes stay (a
    forgotten password, a renderer that now fails)."""
    old = files.read_manifest(paths)
    key = old.get("key") if old is not None else None
    recorded = key.get("input_sha256") if isinstance(key, dict) else None
    if recorded is None or recorded == digest:
        return
    if files.remove_document(paths):
        log.warning(
            "%s: removed the outputs of an earlier conversion (the input changed and now fails to open)",
            shown,
            extra={"file": shown},
        )


def for_stdout(
    result: DocResult, info: RunInfo, *, formats: tuple[str, ...], page_separator: str, single: bool
) -> str:
    """A document for `--stdout`: one input prints as Markdown (or JSON with `--format json`),
    several as JSON Lines; no figure files exist."""
    if single and formats == ("json",):
        return render_json(result, info, figures_written=False)
    if single:
        return render_markdown(result, page_separator=page_separator, image_dir="", figures_written=False)
    return render_jsonl(result, info, figures_written=False)
