"""Render a `DocResult` to JSON (one document) or JSON Lines (one object per page). Pure, no I/O.

Schemas are versioned: a document is `ocrprune.document/1`, a JSON Lines record is
`ocrprune.page/1` (the document's run fields flattened next to the page's fields). Keys come out in
a fixed order, text is written as UTF-8 (`ensure_ascii=False`), documents are indented by 2 and
JSON Lines are compact. Compatible additions keep the version; renames or removals bump it.

Token counts: `visual_total`/`visual_kept` are prunable visual tokens only; newline and separator
tokens are in `layout_total`/`layout_kept`. `keep.r_txt`/`keep.r_sim` appear only when the keep
setting is `auto`. Figure `file` paths and the figure links in `markdown` are relative to the
JSON file (which sits next to the `.md`); boxes are 0-999 page coordinates.
"""

from __future__ import annotations

import json
from typing import Any

import ocrprune
from ocrprune.records import DocResult, KeepInfo, PageResult, RunInfo
from ocrprune.writers.markdown import resolve_image_links

DOCUMENT_SCHEMA = "ocrprune.document/1"
PAGE_SCHEMA = "ocrprune.page/1"
DUMMY_WARNING = "tiny-random model: text is meaningless"
TIMING_STAGES = ("render", "preprocess", "encode", "prune", "prefill", "decode", "total")
TOKEN_FIELDS = (
    "visual_total",
    "visual_kept",
    "layout_total",
    "layout_kept",
    "newlines_collapsed",
    "prompt_unpruned",
    "prompt",
    "generated",
)


def render_json(
    doc: DocResult, run: RunInfo, *, image_dir: str | None = None, figures_written: bool = True
) -> str:
    """The whole document as indented JSON, ending in a newline.

    `figures_written=False` (`--stdout`): figure `file` is null and Markdown links become
    `[figure]`, since no image file exists."""
    folder = _image_dir(doc, image_dir) if figures_written else None
    data = document_fields(doc, run) | {"pages": [page_fields(p, folder) for p in doc.pages]}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def page_json(
    page: PageResult,
    doc: DocResult,
    run: RunInfo,
    *,
    image_dir: str | None = None,
    figures_written: bool = True,
) -> dict[str, Any]:
    """One JSON Lines record: the run/document fields, then the page's own fields."""
    header = {k: v for k, v in document_fields(doc, run).items() if k != "schema"}
    folder = _image_dir(doc, image_dir) if figures_written else None
    return {"schema": PAGE_SCHEMA} | header | page_fields(page, folder)


def render_jsonl(
    doc: DocResult, run: RunInfo, *, image_dir: str | None = None, figures_written: bool = True
) -> str:
    """Compact JSON Lines, one line per page, each ending in a newline.

    A document with no pages (it failed to open) still gets one line, with `page: null` and
    `status: "document_error"`, so a failed input is never silent in the stream. Fields shared
    with page lines keep their type: `keep` is the same object (ratio 0, as on a failed page).
    """
    if doc.pages:
        records = [
            page_json(p, doc, run, image_dir=image_dir, figures_written=figures_written)
            for p in doc.pages
        ]
    else:
        header = {k: v for k, v in document_fields(doc, run).items() if k != "schema"}
        # `keep` is an object on every JSON Lines record, as on page lines (ratio 0: nothing ran,
        # as on a failed page), so a consumer never meets a string where it reads `keep.setting`.
        keep = keep_fields(KeepInfo(setting=run.keep, ratio=0.0, method=run.prune_method))
        records = [
            {"schema": PAGE_SCHEMA}
            | header
            | {"keep": keep, "page": None, "status": "document_error"}
        ]
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


def document_fields(doc: DocResult, run: RunInfo) -> dict[str, Any]:
    """The schema, source and run fields shared by the document and its JSON Lines records."""
    fields: dict[str, Any] = {"schema": DOCUMENT_SCHEMA, "source": doc.source} | run.describe()
    if run.dummy_model:
        fields["warning"] = DUMMY_WARNING
    fields |= {
        "ocrprune_version": run.version or ocrprune.__version__,
        "page_count": doc.page_count or len(doc.pages),
        "error": doc.error,
        "error_kind": doc.error_kind,
    }
    return fields


def page_fields(page: PageResult, image_dir: str | None) -> dict[str, Any]:
    """One page's object inside `pages` (and the page half of a JSON Lines record)."""
    keep = keep_fields(page.keep)
    return {
        "page": page.page,
        "status": page.status,
        "error": page.error,
        "markdown": resolve_image_links(page.markdown, image_dir),
        "raw_text": page.raw_text,
        "boxes": [
            {"label": b.label, "boxes": [list(c) for c in b.boxes], "text": b.text}
            for b in page.boxes
        ],
        "figures": [
            {"file": f"{image_dir}/{f.name}" if image_dir is not None else None, "box": list(f.box)}
            for f in page.figures
        ],
        "tokens": {name: getattr(page.tokens, name) for name in TOKEN_FIELDS},
        "timings_ms": {name: round(getattr(page.timings, name), 2) for name in TIMING_STAGES},
        "keep": keep,
        "size": {"width": page.width, "height": page.height},
    }


def keep_fields(info: KeepInfo) -> dict[str, Any]:
    """A page's `keep` object: the setting, the ratio used and the method (`r_txt`/`r_sim` with
    `auto`)."""
    keep: dict[str, Any] = {"setting": info.setting, "ratio": info.ratio, "method": info.method}
    if info.setting == "auto":
        keep |= {"r_txt": info.r_txt, "r_sim": info.r_sim}
    return keep


def _image_dir(doc: DocResult, image_dir: str | None) -> str:
    return image_dir if image_dir is not None else f"{doc.stem}_images"
