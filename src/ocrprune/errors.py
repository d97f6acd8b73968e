"""Exit codes and the exceptions that carry them.

Core code raises an `OcrpruneError` subclass whose message names the file (and page) and, where
one exists, the flag that fixes it. Only `cli` turns these into a one-line message and an exit code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit status contract, documented in `--help` and the README."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PARTIAL = 3
    NOTHING_SUCCEEDED = 4
    ENVIRONMENT = 5
    OUTPUT_NOT_WRITABLE = 6
    INTERRUPTED = 130


class OcrpruneError(Exception):
    """Base class: every expected failure carries the exit code it maps to."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(OcrpruneError):
    """A flag or argument that cannot work (found after parsing, e.g. no inputs at all)."""

    exit_code = ExitCode.USAGE


class InputError(OcrpruneError):
    """A document or page that cannot be read; `kind` is a short machine-readable reason."""

    exit_code = ExitCode.NOTHING_SUCCEEDED

    def __init__(self, path: str, kind: str, detail: str, page: int | None = None) -> None:
        self.path = path
        self.kind = kind
        self.detail = detail
        self.page = page
        where = f"{path}" if page is None else f"{path} page {page}"
        super().__init__(f"{where}: {kind}: {detail}")


class ModelLoadError(OcrpruneError):
    """The model or tokenizer cannot be loaded (offline with no cache, bad folder, no safetensors)."""

    exit_code = ExitCode.ENVIRONMENT


class DeviceError(OcrpruneError):
    """The requested device is absent (e.g. `--device cuda` on a machine without CUDA)."""

    exit_code = ExitCode.ENVIRONMENT


class OutputError(OcrpruneError):
    """The output folder cannot be written, or a path would escape it."""

    exit_code = ExitCode.OUTPUT_NOT_WRITABLE
