"""Model specs: everything the runtime knows about one model family, in one place."""

from ocrprune.models.deepseek_ocr_v1 import DEEPSEEK_OCR_V1, ModelSpec

__all__ = ["DEEPSEEK_OCR_V1", "ModelSpec"]
