"""Exit codes and the exceptions that carry them.

Core code raises an `OcrpruneError` subclass whose message names the file (and page) and, where
one exists, the flag that fixes it. Only `cli` turns these into a one-line message and an exit code.
"""

from __future__ import annotations

from enum import IntEnum

from .names import escape_name


class ExitCode(IntEnum):
    """The process exit status contract, documented in `--help` and the README."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PARTIAL = 3
    NOTHING_SUCCEEDED = 4
    ENVIRONMENT = 5
    OUTPUT_NOT_WRITABLE = 6
    BUSY = 75  # EX_TEMPFAIL: another run holds the output folder; try again later
    INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143 and SIGHUP 129 (128 + signal number)


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
        # Library messages can quote undecodable names or span lines: keep every report one line.
        self.detail = escape_name(detail)
        self.page = page
        shown = escape_name(path)
        where = shown if page is None else f"{shown} page {page}"
        super().__init__(f"{where}: {kind}: {self.detail}")

    def __reduce__(self) -> tuple[object, ...]:
        # Picklable (render workers and other processes send these back): rebuild from the fields.
        return (type(self), (self.path, self.kind, self.detail, self.page))


class ModelLoadError(OcrpruneError):
    """The model or tokenizer cannot be loaded (offline with no cache, bad folder, no safetensors)."""

    exit_code = ExitCode.ENVIRONMENT


class DependencyError(OcrpruneError):
    """An optional package the chosen feature needs is not installed (e.g. vLLM for --engine vllm)."""

    exit_code = ExitCode.ENVIRONMENT


class DeviceError(OcrpruneError):
    """The requested device is absent (e.g. `--device cuda` on a machine without CUDA)."""

    exit_code = ExitCode.ENVIRONMENT


class OutputError(OcrpruneError):
    """The output folder cannot be written, or a path would escape it."""

    exit_code = ExitCode.OUTPUT_NOT_WRITABLE


class UnsafeOutputError(OutputError):
    """A path under the output folder that ocrprune refuses to follow or write: a link or a
    non-regular file planted where its own files go, a manifest naming a path outside the
    document's folder. Raised for one document, it costs that document (kind `unsafe_output`)
    and the batch goes on; raised for the run's own files (lock, marker, run reports) it stops
    the run with exit 6, before anything is written through it."""

    kind = "unsafe_output"

    def __init__(self, path: object, detail: str) -> None:
        self.path = str(path)
        self.detail = escape_name(detail)
        super().__init__(f"refusing {escape_name(self.path)}: {self.detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.detail))


class BusyError(OcrpruneError):
    """Another ocrprune run is writing to the same output folder (an overrunning cron job)."""

    exit_code = ExitCode.BUSY


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: stop like Ctrl-C; the exit code is 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
