"""The `ocrprune` command line: parse and check flags, build one `RunConfig`, call the pipeline,
print the summary on stderr and exit with the documented code.

Nothing here imports torch: `ocrprune --help` starts instantly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from . import __version__
from .config import (
    DEFAULT_MODEL,
    MODES,
    PROMPTS,
    GenerationSettings,
    ModelConfig,
    PruneConfig,
    RasterConfig,
    RunConfig,
    parse_keep,
    resolve_prompt,
)
from .console import ProgressView, setup_logging
from .errors import ExitCode, OcrpruneError

EXIT_CODES_HELP = """\b
Exit codes:
  0    every page converted
  1    internal error (a bug; run with -v for the traceback)
  2    usage error (bad flag or value)
  3    finished, but some inputs or pages failed (the rest were written)
  4    nothing succeeded (no usable input, or every document failed)
  5    environment: the model will not load, or CUDA was asked for and is absent
  6    the output folder is not writable
  130  interrupted (Ctrl-C); finished documents are written
"""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Batch OCR with DeepSeek-OCR and RTPrune visual-token pruning.\n\n" + EXIT_CODES_HELP,
)
log = logging.getLogger("ocrprune")


def _keep_callback(value: str) -> str:
    try:
        parse_keep(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _prompt_callback(value: str) -> str:
    try:
        resolve_prompt(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def parse_pages(text: str | None) -> tuple[tuple[int, int], ...]:
    """`1-3,7` -> ((1, 3), (7, 7)); 1-based and inclusive."""
    if not text:
        return ()
    ranges = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        start, sep, end = part.partition("-")
        try:
            first = int(start)
            last = int(end) if sep and end.strip() else (10**9 if sep else first)
        except ValueError:
            raise typer.BadParameter(f"page ranges look like 1-3,7 (got {text!r})") from None
        if first < 1 or last < first:
            raise typer.BadParameter(f"page ranges are 1-based and ascending (got {part!r})")
        ranges.append((first, last))
    return tuple(ranges)


def _pages_callback(value: Optional[str]) -> Optional[str]:
    parse_pages(value)
    return value


def _formats_callback(value: str) -> str:
    formats = {f.strip().lower() for f in value.split(",") if f.strip()}
    if not formats or formats - {"md", "json"}:
        raise typer.BadParameter("use md, json or md,json")
    return value



# Options shared by `convert` and `sweep`, declared once.
PruneMethodOpt = Annotated[
    str, typer.Option(help="rtprune (norm + OT merge), norm (stage 1 only) or random (same budget).")
]
ModeOpt = Annotated[str, typer.Option(help="Resolution mode: " + ", ".join(MODES) + ".")]
PromptOpt = Annotated[
    str,
    typer.Option(help="Preset (" + ", ".join(PROMPTS) + ") or custom text containing <image>.", callback=_prompt_callback),
]
ModelOpt = Annotated[str, typer.Option(help="Hub id, a local folder in the official layout, or tiny-random.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision (defaults to a pinned commit).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cuda or cpu.")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16 or fp32.")]
MaxNewTokensOpt = Annotated[int, typer.Option(min=1, max=8192, help="Token limit per page.")]
DpiOpt = Annotated[int, typer.Option(min=18, max=1200, help="PDF rendering resolution.")]
PagesOpt = Annotated[Optional[str], typer.Option(help="Page ranges, 1-based: 1-3,7.", callback=_pages_callback)]
PasswordOpt = Annotated[Optional[str], typer.Option(help="Password for encrypted PDFs.")]
GlobOpt = Annotated[Optional[str], typer.Option(help="Filter for files found in folders, e.g. '*.pdf'.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for --prune-method random and the tiny-random model.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Errors only on stderr.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]
LogFormatOpt = Annotated[str, typer.Option(help="text or json (one object per line on stderr).")]


@contextlib.contextmanager
def protected_stdout() -> Iterator[Callable[[str], None]]:
    """Reserve stdout for data: anything else printing to fd 1 (Python or C code) goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(saved, "w", encoding="utf-8", closefd=True)
    old_stdout = sys.stdout
    sys.stdout = sys.stderr

    def emit(text: str) -> None:
        real.write(text)
        real.flush()

    try:
        yield emit
    finally:
        sys.stdout = old_stdout
        real.flush()
        os.dup2(real.fileno(), 1)
        real.close()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ocrprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Batch OCR with DeepSeek-OCR and RTPrune visual-token pruning."""


_CHOICES: dict[str, tuple[str, ...]] = {
    "prune_method": ("rtprune", "norm", "random"),
    "mode": tuple(MODES),
    "device": ("auto", "cuda", "cpu"),
    "dtype": ("auto", "bf16", "fp32"),
    "log_format": ("text", "json"),
}


def _check_choices(**values: str) -> None:
    """Usage errors (exit 2) for flags with a fixed set of values."""
    for name, value in values.items():
        allowed = _CHOICES[name]
        if value not in allowed:
            flag = "--" + name.replace("_", "-")
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=flag)


@app.command(epilog=EXIT_CODES_HELP)
def convert(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="PDFs, images, folders (recursive), quoted globs, @list.txt, or - for paths on stdin.",
            show_default=False,
            metavar="INPUT",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (mirrors the input tree).")] = Path(
        "ocrprune-out"
    ),
    keep: Annotated[
        str,
        typer.Option(
            help="Visual tokens to keep: 'auto' (RTPrune's per-page ratio) or a fraction in (0, 1]; 1 = no pruning.",
            callback=_keep_callback,
        ),
    ] = "auto",
    prune_method: PruneMethodOpt = "rtprune",
    mode: ModeOpt = "gundam",
    prompt: PromptOpt = "markdown",
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: Annotated[
        Optional[int], typer.Option(min=1, help="Pages per GPU batch (default: from free memory and mode).")
    ] = None,
    max_new_tokens: MaxNewTokensOpt = 8192,
    page_timeout: Annotated[
        Optional[float], typer.Option(min=0.1, help="Seconds of generation per batch before pages time out.")
    ] = None,
    dpi: DpiOpt = 144,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    glob: GlobOpt = None,
    format: Annotated[str, typer.Option("--format", help="md, json or md,json.", callback=_formats_callback)] = "md,json",
    page_separator: Annotated[
        str, typer.Option(help="Text between pages in Markdown.")
    ] = "\n\n<--- Page Split --->\n\n",
    stdout: Annotated[
        bool, typer.Option("--stdout", help="Write Markdown (one input) or JSON Lines (one line per page) to stdout.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Redo documents already converted with the same options.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Redo documents that had failed pages.")] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failure.")] = False,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Convert documents to Markdown and JSON, with a per-page timing and token report."""
    _check_choices(prune_method=prune_method, mode=mode, device=device, dtype=dtype, log_format=log_format)
    setup_logging(-1 if quiet else (1 if verbose else 0), log_format)
    config = RunConfig(
        inputs=tuple(inputs),
        out=out,
        model=ModelConfig(model=model, revision=revision, device=device, dtype=dtype, seed=seed),  # type: ignore[arg-type]
        prune=PruneConfig(keep=parse_keep(keep), method=prune_method, seed=seed),  # type: ignore[arg-type]
        generation=GenerationSettings(
            mode=mode, prompt=resolve_prompt(prompt), max_new_tokens=max_new_tokens, page_timeout=page_timeout
        ),
        raster=RasterConfig(dpi=dpi, password=password, pages=parse_pages(pages)),
        formats=tuple(sorted({f.strip().lower() for f in format.split(",") if f.strip()})),
        glob=glob,
        batch_size=batch_size,
        page_separator=page_separator,
        stdout=stdout,
        force=force,
        retry_failed=retry_failed,
        fail_fast=fail_fast,
    )
    raise typer.Exit(_run_convert(config, quiet, verbose))


T = TypeVar("T")


def _guarded(progress: ProgressView, work: Callable[[], T]) -> T:
    """Run `work`; the one place that maps exceptions to a one-line message and an exit code."""
    try:
        return work()
    except OcrpruneError as exc:
        log.error("%s", exc)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        log.error("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback, exit 1
        log.error("internal error (this is a bug; please report it)", exc_info=True)
        raise typer.Exit(int(ExitCode.INTERNAL)) from None
    finally:
        progress.close()


def _run_convert(config: RunConfig, quiet: bool, verbose: bool) -> int:
    """Run the pipeline and map its outcome or exception to an exit code."""
    from . import pipeline
    from .report import render_summary

    progress = ProgressView(enabled=not quiet)
    stdin = sys.stdin if "-" in config.inputs else None

    def work() -> "pipeline.RunOutcome":
        if config.stdout:
            with protected_stdout() as emit:
                return pipeline.run(config, progress=progress, stdin=stdin, emit=emit)
        return pipeline.run(config, progress=progress, stdin=stdin)

    outcome = _guarded(progress, work)
    if not quiet and outcome.report is not None:
        sys.stderr.write(render_summary(outcome.report))
        if not config.stdout:
            sys.stderr.write(f"outputs in {config.out}/ (report.json, pages.csv)\n")
    return int(outcome.exit_code)


def _keeps_callback(value: str) -> str:
    from .sweep import parse_keeps

    try:
        parse_keeps(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@app.command(epilog=EXIT_CODES_HELP)
def sweep(
    inputs: Annotated[
        list[str],
        typer.Argument(help="Documents to measure (same forms as for convert).", show_default=False, metavar="INPUT"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for sweep.json and sweep.png.")] = Path(
        "ocrprune-sweep"
    ),
    keep: Annotated[
        str, typer.Option(help="Comma-separated keep settings to compare with the unpruned run.", callback=_keeps_callback)
    ] = "1,0.8,0.6,0.4,auto",
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fidelity the recommended keep must reach (1 - edit distance).")
    ] = 0.98,
    prune_method: PruneMethodOpt = "rtprune",
    mode: ModeOpt = "gundam",
    prompt: PromptOpt = "markdown",
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Pages per batch.")] = 1,
    max_new_tokens: MaxNewTokensOpt = 8192,
    dpi: DpiOpt = 144,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    glob: GlobOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run documents unpruned and at each keep setting; report speedup and fidelity, and recommend a keep."""
    from .sweep import SweepConfig, parse_keeps, render_sweep_table, run_sweep

    _check_choices(prune_method=prune_method, mode=mode, device=device, dtype=dtype, log_format=log_format)
    setup_logging(-1 if quiet else (1 if verbose else 0), log_format)
    config = SweepConfig(
        inputs=tuple(inputs),
        out=out,
        keeps=parse_keeps(keep),
        threshold=threshold,
        model=ModelConfig(model=model, revision=revision, device=device, dtype=dtype, seed=seed),  # type: ignore[arg-type]
        generation=GenerationSettings(mode=mode, prompt=resolve_prompt(prompt), max_new_tokens=max_new_tokens),
        raster=RasterConfig(dpi=dpi, password=password, pages=parse_pages(pages)),
        method=prune_method,  # type: ignore[arg-type]
        seed=seed,
        batch_size=batch_size,
        glob=glob,
    )
    progress = ProgressView(enabled=not quiet)
    report = _guarded(progress, lambda: run_sweep(config, progress=progress))
    if not quiet:
        sys.stderr.write(render_sweep_table(report))
    raise typer.Exit(int(report.exit_code))


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
