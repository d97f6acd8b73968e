"""Render a `DocResult` to Markdown. Pure: records in, a string out, no I/O.

Guarantees:

* Every page appears, in order, joined by `page_separator`; an empty `ok` page is an empty string
  between two separators, so the page count can be read back from the file.
* A page whose status is not `ok` starts with a visible one-line block quote naming the page and status
  (and the error for `render_error`/`model_error`), followed by whatever text the page has. A
  document that could not be opened renders as one such line. The markers are plain text in the
  file, so `grep 'ocrprune: page'` finds every incomplete page.
* The `<<IMGDIR>>` placeholder that `postprocess` writes into figure links is replaced by
  `image_dir` (the image folder's name, relative to the `.md` file), with spaces, brackets and a
  few URL-special characters percent-encoded so the link stays a valid Markdown destination.
"""

from __future__ import annotations

import re

from ocrprune.records import DocResult, PageResult

DEFAULT_PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"
# Must equal ocrprune.postprocess.grounding.IMAGE_DIR_PLACEHOLDER (a test checks it); repeated here so the
# writers do not import PIL.
IMAGE_DIR_PLACEHOLDER = "<<IMGDIR>>"

_STATUS_NOTES = {
    "length": "stopped at the token limit without end-of-sequence; output may be truncated",
    "repetition": "stopped at the token limit in a loop; output repeats itself",
    "timeout": "generation hit the time limit; output may be truncated",
}
_FIGURE_LINK = re.compile(r"!\[[^\]\n]*\]\(" + re.escape(IMAGE_DIR_PLACEHOLDER) + r"/[^)\n]*\)")
_LINK_ESCAPES = str.maketrans(
    {c: f"%{ord(c):02X}" for c in "% ()<>[]#?"} | {"\n": "%0A", "\t": "%09"}
)


def render_markdown(
    doc: DocResult,
    *,
    page_separator: str = DEFAULT_PAGE_SEPARATOR,
    image_dir: str,
    figures_written: bool = True,
) -> str:
    """The document's Markdown, ending in one newline (or "" for a document with nothing at all).

    With `figures_written=False` (`--stdout`, where no image file exists) figure links are
    replaced by a plain `[figure]` so nothing links to a file that was never written."""
    parts: list[str] = []
    if doc.error is not None:
        kind = f"{doc.error_kind}: " if doc.error_kind else ""
        parts.append(_comment(f"document failed: {kind}{doc.error}"))
    pages = [render_page(page, image_dir if figures_written else None) for page in doc.pages]
    if pages:
        parts.append(page_separator.join(pages))
    text = "\n\n".join(parts)
    return text.rstrip("\n") + "\n" if text.strip() else ""


def render_page(page: PageResult, image_dir: str | None) -> str:
    """One page's Markdown, preceded by a status marker line unless the page is `ok`."""
    body = resolve_image_links(page.markdown, image_dir)
    marker = status_marker(page)
    if marker is None:
        return body
    return f"{marker}\n\n{body}" if body.strip() else marker


def resolve_image_links(markdown: str, image_dir: str | None) -> str:
    """Replace the figure-link placeholder with `image_dir`, escaped for a Markdown destination;
    with `image_dir=None` (no figure files) each figure link becomes a plain `[figure]`."""
    if image_dir is None:
        return _FIGURE_LINK.sub("[figure]", markdown)
    return markdown.replace(IMAGE_DIR_PLACEHOLDER, image_dir.translate(_LINK_ESCAPES))


def status_marker(page: PageResult) -> str | None:
    """The marker line of a non-`ok` page: `> **ocrprune: page 3 status=timeout (...)**`."""
    if page.status == "ok":
        return None
    head = f"page {page.page} status={page.status}"
    note = _STATUS_NOTES.get(page.status)
    if note is not None:
        return _comment(f"{head} ({note})")
    return _comment(f"{head}: {page.error}" if page.error else head)


def _comment(text: str) -> str:
    """A visible one-line block quote, so a reader of the rendered Markdown sees the gap."""
    flat = " ".join(text.split())
    return f"> **ocrprune: {flat}**"
