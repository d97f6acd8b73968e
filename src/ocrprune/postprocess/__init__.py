"""After the model: raw DeepSeek-OCR text to Markdown, boxes and figures (`grounding`), and the
test that tells a looping page from a long one (`loops`). Pure: no torch, no files."""

from __future__ import annotations

from ocrprune.postprocess.grounding import IMAGE_DIR_PLACEHOLDER, postprocess_page
from ocrprune.postprocess.loops import ends_in_loop

__all__ = ["IMAGE_DIR_PLACEHOLDER", "ends_in_loop", "postprocess_page"]
