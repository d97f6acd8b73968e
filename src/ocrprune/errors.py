"""Exit codes and the exceptions that carry them.

Core code raises an `OcrpruneError` subclass whose message names the file (and page) and, where
one exists, the flag that fixes it. Only `cli` turns these into a one-line message and an exit code.
"""

from __future__ import annotations

from enum import IntEnum

from ocrprune.names import escape_name


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


# The exit-code table, one source for `--help` and the README's "Exit codes" section (a test
# compares the README with it): (codes as written, meaning in Markdown).
EXIT_CODE_TABLE: tuple[tuple[str, str], ...] = (
    (
        "0",
        "every page of every document is `ok` (documents skipped as already done included), "
        "or there was nothing to do (an empty folder, list or stdin)",
    ),
    ("1", "internal error (a bug; `-v` shows the traceback)"),
    ("2", "usage error (bad flag or value)"),
    (
        "3",
        "finished, but some inputs or pages are not `ok` (`length` pages, and skipped documents "
        "whose recorded pages failed, included); the rest was written",
    ),
    (
        "4",
        "no page produced any output (every input failed, or every page failed to render or run)",
    ),
    (
        "5",
        "environment: the model will not load, CUDA was asked for and is absent, an optional "
        "extra is missing (`--renderer pdfium` without pypdfium2, `--engine vllm` without vLLM, "
        "`--ray` without Ray), or a Ray cluster cannot be reached or started",
    ),
    ("6", "the output folder is not writable (also when it becomes read-only or full mid-run)"),
    ("75", "another ocrprune run is writing to the same `--out` (try again later)"),
    (
        "130, 143, 129",
        "interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP (128 + the signal number); finished "
        "documents and pages are kept",
    ),
)


def password_problem(source: str | None, *, wrong: bool) -> str:
    """The detail of an `encrypted` failure: which password source was used (`--password-file
    FILE`, `OCRPRUNE_PASSWORD`, `--password`; None: none given) and what to do, recommending the
    file (a `--password` shows in `ps`; a variable is easily left set or forgotten)."""
    if not wrong:
        return (
            "needs a password; put it in a file and pass --password-file FILE "
            "(or set OCRPRUNE_PASSWORD)"
        )
    if source is not None and source.startswith("--password-file"):
        return f"the password in {source} is wrong"
    if source == "OCRPRUNE_PASSWORD":
        return "the password in OCRPRUNE_PASSWORD is wrong; prefer --password-file FILE"
    if source == "--password":
        return (
            "the password given with --password is wrong; prefer --password-file FILE "
            "(--password shows in ps)"
        )
    return "the password given with --password is wrong"  # a library caller that named no source


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
