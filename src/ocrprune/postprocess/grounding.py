"""Raw DeepSeek-OCR text -> Markdown, layout boxes and cropped figures (runtime doc §1.8).

Guarantees:

* Never raises on model output. Grounding spans
  `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` are parsed tolerantly: a span that is
  truncated, has unparsable numbers, boxes of the wrong arity or no box at all is *malformed*; its
  markers are removed from the Markdown and it yields no box. Text after the markers is kept; an
  unclosed `<|det|>` loses only what looks like coordinates, but an unclosed `<|ref|>` loses all
  text up to the next span (label and content cannot be told apart).
* Coordinates stay in the model's 0-999 space of the original, unpadded page (values are rounded,
  clamped to 0..999 and each box is put in x1<=x2, y1<=y2 order). Pixels are
  `floor(v / 999 * W)` (or `H`), so a crop never leaves the page; zero-area crops are skipped.
* `image` regions are cropped from the page image and replaced by one Markdown image link per box,
  `![](<<IMGDIR>>/page0001_fig01.jpg)`. Postprocessing does not know where the document's outputs
  go, so `<<IMGDIR>>` (`IMAGE_DIR_PLACEHOLDER`) is a placeholder that `writers.markdown` replaces
  with the document's image folder (relative to the `.md`). Figures are numbered from 1 per page.
* Every well-formed span, `image` included, becomes a `Box` whose text is the content that follows
  it up to the next span (with the same clean-ups).
* Markers outside any span (a `<|det|>` block with no `<|ref|>`, a stray `<|/det|>`) are removed.
* Official clean-ups: trailing `<｜end▁of▁sentence｜>` removed, `\\coloneqq` -> `:=`,
  `\\eqqcolon` -> `=:`, 3+ newlines -> 2, surrounding whitespace stripped. HTML tables are kept.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image

from ocrprune.records import Box, Figure

IMAGE_DIR_PLACEHOLDER = "<<IMGDIR>>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
JPEG_QUALITY = 90

_REF_OPEN = "<|ref|>"
_REF_CLOSE = "<|/ref|>"
_DET_OPEN = "<|det|>"
_DET_CLOSE = "<|/det|>"
_MARKERS = (EOS_TOKEN, _REF_OPEN, _REF_CLOSE, _DET_OPEN, _DET_CLOSE)
_INNER_GROUP = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# a det block with no ref before it, and any marker left over once spans are removed
_ORPHAN_DET = re.compile(r"<\|det\|>[\s\d.,+\-\[\]]*(?:<\|/det\|>)?")
_STRAY_MARKER = re.compile(r"<\|/?(?:ref|det|grounding)\|>")
_COORD_CHARS = re.compile(r"[\s\d.,+\-\[\]]*")

BoxCoords = tuple[int, int, int, int]


@dataclass(frozen=True)
class Span:
    """One grounding span found in raw text.

    `start`/`end` delimit the markers (`<|ref|>` up to and including `<|/det|>`, or to where a
    truncated span stops); `content` is the raw text after the markers up to the next span.
    `boxes` is empty when the span is malformed.
    """

    label: str
    boxes: tuple[BoxCoords, ...]
    start: int
    end: int
    content: str

    @property
    def ok(self) -> bool:
        return bool(self.label) and bool(self.boxes)


def parse_grounding(raw: str) -> list[Span]:
    """Find every `<|ref|>` span in `raw`, in order; malformed spans come back with no boxes."""
    starts = _find_all(raw, _REF_OPEN)
    limits = starts[1:] + [len(raw)]  # a span's markers and content end where the next begins
    spans: list[Span] = []
    for start, limit in zip(starts, limits, strict=False):
        end, label, det_body = _marker_end(raw, start, limit)
        boxes = _parse_boxes(det_body) if det_body is not None else ()
        spans.append(Span(label.strip(), boxes, start, end, raw[end:limit]))
    return spans


def postprocess_page(
    raw_text: str, page_image: Image.Image | None, page_no: int
) -> tuple[str, tuple[Box, ...], tuple[Figure, ...]]:
    """Turn one page's raw model output into (markdown, boxes, figures)."""
    text = _strip_eos(raw_text)
    spans = parse_grounding(text)
    pieces: list[str] = [text[: spans[0].start] if spans else text]
    boxes: list[Box] = []
    figures: list[Figure] = []
    for span in spans:
        if span.ok:
            boxes.append(Box(span.label, span.boxes, clean_markdown(span.content)))
        if span.ok and span.label == "image" and page_image is not None:
            links = []
            for coords in span.boxes:
                figure = _crop_figure(page_image, coords, page_no, len(figures) + 1)
                if figure is not None:
                    figures.append(figure)
                    links.append(f"![]({IMAGE_DIR_PLACEHOLDER}/{figure.name})")
            if links:
                pieces.append("\n\n".join(links) + "\n")
        pieces.append(span.content)
    return clean_markdown("".join(pieces)), tuple(boxes), tuple(figures)


def clean_markdown(text: str) -> str:
    """Drop orphan markers, then the official clean-ups (runtime doc §1.8) minus eval-only ones."""
    text = _ORPHAN_DET.sub("", text)
    while (stripped := _STRAY_MARKER.sub("", text)) != text:
        text = stripped
    text = text.replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:")
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def _strip_eos(text: str) -> str:
    """Drop trailing end-of-sentence tokens, and a special marker cut off at the very end."""
    text = text.rstrip()
    while text.endswith(EOS_TOKEN):
        text = text[: -len(EOS_TOKEN)].rstrip()
    for marker in _MARKERS:
        cut = next((k for k in range(len(marker) - 1, 1, -1) if text.endswith(marker[:k])), 0)
        if cut:
            return text[:-cut].rstrip()
    return text


def _find_all(text: str, needle: str) -> list[int]:
    found: list[int] = []
    pos = text.find(needle)
    while pos != -1:
        found.append(pos)
        pos = text.find(needle, pos + len(needle))
    return found


def _marker_end(raw: str, start: int, limit: int) -> tuple[int, str, str | None]:
    """Where the markers of the span at `start` end (never past `limit`, the next span).

    Returns (end, label, det body or None when the span is malformed or truncated).
    """
    label_from = start + len(_REF_OPEN)
    ref_close = raw.find(_REF_CLOSE, label_from, limit)
    if ref_close == -1:
        return limit, "", None
    label = raw[label_from:ref_close]
    after_ref = ref_close + len(_REF_CLOSE)
    det_open = after_ref
    while det_open < limit and raw[det_open].isspace():
        det_open += 1
    if not raw.startswith(_DET_OPEN, det_open, limit):
        return after_ref, label, None
    body_from = det_open + len(_DET_OPEN)
    det_close = raw.find(_DET_CLOSE, body_from, limit)
    if det_close == -1:  # unclosed: drop what looks like coordinates, keep any text after them
        coords = _COORD_CHARS.match(raw, body_from, limit)
        return (coords.end() if coords else body_from), label, None
    return det_close + len(_DET_CLOSE), label, raw[body_from:det_close]


def _parse_boxes(body: str) -> tuple[BoxCoords, ...]:
    """Every innermost `[...]` group holding exactly four numbers becomes a normalised box."""
    boxes: list[BoxCoords] = []
    for group in _INNER_GROUP.findall(body):
        parts = [p.strip() for p in group.split(",")]
        if len(parts) != 4 or not all(_NUMBER.fullmatch(p) for p in parts):
            continue
        x1, y1, x2, y2 = (_clamp(round(float(p))) for p in parts)
        boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return tuple(boxes)


def _clamp(value: int) -> int:
    return max(0, min(999, value))


def _crop_figure(image: Image.Image, coords: BoxCoords, page_no: int, index: int) -> Figure | None:
    """Crop a 0-999 box from the page as JPEG; None if it has no area in pixels."""
    width, height = image.size
    x1, y1, x2, y2 = coords
    # pixel = floor(v / 999 * size), in integer arithmetic so 999 maps exactly to the edge
    left, right = x1 * width // 999, x2 * width // 999
    top, bottom = y1 * height // 999, y2 * height // 999
    if right <= left or bottom <= top:
        return None
    crop = image.crop((left, top, right, bottom)).convert("RGB")
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return Figure(f"page{page_no:04d}_fig{index:02d}.jpg", coords, buffer.getvalue())
