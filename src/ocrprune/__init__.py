"""ocrprune: batch OCR with DeepSeek-OCR and RTPrune visual-token pruning."""

__version__ = "0.1.0"
