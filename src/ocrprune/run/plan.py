"""Planning one document of a run before anything converts it: where its files go (an output name
taken by another input moves aside), its input digest and resume key, and whether an earlier run
already did it (skipped) or left page checkpoints to reuse.

Why apart from the run: a local run and the driver of a distributed run plan the same way, and
planning touches only `--out` and the input's bytes, never a model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from ocrprune.config import RunConfig
from ocrprune.errors import InputError, UnsafeOutputError
from ocrprune.inputs import Document, fallback_rel
from ocrprune.names import escape_name
from ocrprune.records import DocResult
from ocrprune.run.document import DocState, input_digest
from ocrprune.run.resume import RunKey, already_done, load_reuse
from ocrprune.writers import files
from ocrprune.writers.document import source_path

log = logging.getLogger("ocrprune")


@dataclass(frozen=True)
class PlanFailure:
    """A document that fails before conversion (it vanished, or a link is planted where its files
    go): the error, and the output name it would have had (its report `stem`)."""

    error: InputError
    rel: PurePosixPath


Planned = DocState | DocResult | PlanFailure  # to convert, skipped as done, or failed here


def plan_document(
    index: int, doc: Document, layout: files.OutputLayout | None, run_key: RunKey, config: RunConfig
) -> Planned:
    """Where a document goes and what is already done. Without a layout (`--stdout`) there is
    nothing to resume: the document is converted."""
    shown = escape_name(doc.display)
    if layout is None:
        return DocState(index=index, doc=doc, shown=shown, rel=doc.rel, paths=None)
    rel = doc.rel
    try:
        paths = layout.paths_for(rel)
        if files.taken_by_other(paths, source_path(doc.path)):
            rel = fallback_rel(rel, os.fspath(doc.path))
            log.warning("%s: output name %s is taken; writing to %s", shown, escape_name(str(doc.rel)), escape_name(str(rel)))
            paths = layout.paths_for(rel)
        try:
            digest = input_digest(doc)
        except InputError as error:
            return PlanFailure(error, rel)
        state = DocState(index=index, doc=doc, shown=shown, rel=rel, paths=paths, digest=digest, key=run_key.key(digest))
        if config.force:
            files.clear_checkpoints(paths)
            return state
        manifest = files.read_manifest(paths)
        recorded = already_done(state, manifest, run_key, config) if manifest is not None else None
        if recorded is not None:
            return recorded
        load_reuse(state, config)
    except UnsafeOutputError as unsafe:
        # A link planted where this document's files go: this document only, never the batch.
        return PlanFailure(InputError(doc.display, unsafe.kind, str(unsafe)), rel)
    return state


def log_skipped(docs: list[DocResult]) -> None:
    """One line for the documents skipped as already done, and one for those of them that are
    not all `ok` (what `--retry-failed` would redo)."""
    skipped = [d for d in docs if d.skipped]
    if skipped:
        log.info("skipped %d document(s) already converted with the same options (use --force to redo)", len(skipped))
        not_ok = sum(1 for d in skipped if not d.ok)
        if not_ok:
            log.warning(
                "%d skipped document(s) have failed or capped pages recorded; --retry-failed redoes those pages",
                not_ok,
            )
