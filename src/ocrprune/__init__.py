"""ocrprune: batch OCR with DeepSeek-OCR and RTPrune visual-token pruning."""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source of truth: the version in pyproject.toml, as the installed package records it.
    __version__ = version("ocrprune")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
