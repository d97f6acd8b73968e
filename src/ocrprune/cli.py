"""The `ocrprune` command line: parse and check flags, build one `RunConfig`, call the pipeline,
print the summary on stderr and exit with the documented code.

Nothing here imports torch: `ocrprune --help` starts instantly, and usage errors (bad flags, bad
`OCRPRUNE_*` values, an unreadable password file) exit 2 before anything heavy is loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional, TextIO, TypeVar, cast

import typer
from typer.core import TyperCommand, TyperGroup

from ocrprune import __version__
from ocrprune.config import (
    DEFAULT_MODEL,
    DEFAULT_RAY_TIMEOUT,
    DEFAULT_RENDER_TIMEOUT,
    PROMPTS,
    DeviceName,
    DtypeName,
    GenerationSettings,
    Keep,
    ModelConfig,
    ModeName,
    PruneConfig,
    PruneMethod,
    RasterConfig,
    RendererName,
    RunConfig,
    parse_keep,
    resolve_prompt,
)
from ocrprune.console import ProgressView, errors_logged, setup_logging
from ocrprune.errors import EXIT_CODE_TABLE, ExitCode, OcrpruneError

if TYPE_CHECKING:
    from ocrprune.sweep.report import SweepReport

LogFormat = Literal["text", "json"]
PASSWORD_ENV = "OCRPRUNE_PASSWORD"
RAY_LOCAL = "local"  # what `--ray` given without an address stands for



def exit_codes_help(width: int = 76) -> str:
    """`--help`'s exit-code table, from `EXIT_CODE_TABLE` (the README's table is the same rows).
    `\\b` keeps Click from re-wrapping it; meanings wrap under their own column, and a code label
    too long for its column (`130, 143, 129`) pushes only its first line along."""
    column = 5
    lines = ["\b", "Exit codes:"]
    for code, meaning in EXIT_CODE_TABLE:
        label = f"  {code.ljust(column - 2)}  " if len(code) <= column - 2 else f"  {code}  "
        words = meaning.replace("`", "")
        first = textwrap.wrap(words, width - len(label))[0]
        rest = textwrap.wrap(words[len(first):].strip(), width - column - 2)
        lines.append(label + first)
        lines.extend(" " * (column + 2) + line for line in rest)
    return "\n".join(lines) + "\n"


EXIT_CODES_HELP = exit_codes_help()

CONVERT_EXAMPLES = """\b
Examples:
  ocrprune convert scans/ --out out/                  a folder, recursively
  ocrprune convert report.pdf --pages 1-3,7 --stdout > report.md
  find inbox -name '*.pdf' -print0 | ocrprune convert - -0 --out out/
  ocrprune convert @todo.txt --keep 0.4 --mode base --out out/
  OCRPRUNE_PASSWORD=secret ocrprune convert locked.pdf --out out/
  ocrprune convert sample_docs/ --model tiny-random --device cpu --mode tiny --max-new-tokens 64
                                                      a demo in seconds (meaningless text)

\b
Nightly cron job (defaults from the environment, JSON logs, quiet unless something fails):
  OCRPRUNE_OUT=/srv/ocr OCRPRUNE_MODE=base ocrprune convert /srv/inbox -q --log-format json
"""

SWEEP_EXAMPLES = """\b
Examples:
  ocrprune sweep samples/ --keep 1,0.8,0.6,0.4,auto
  ocrprune sweep report.pdf --pages 1-5 --threshold 0.95 --out sweep/
"""


def _click_class(name: str) -> type[Exception]:
    """Click's exception class `name`, as the installed Typer uses it (recent Typer vendors its
    own copy of Click, older Typer uses `click`): found through `typer.BadParameter`'s bases."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_class("ClickException")
ClickUsageError = _click_class("UsageError")


def json_logs_requested(args: Sequence[str]) -> bool:
    """Whether the command line asks for `--log-format json` (the last one given wins, as in
    Click; nothing after `--` counts). Read before Click parses anything, so a usage error Click
    meets before it reaches the option, or in the option's neighbours, is still reported as JSON."""
    chosen = None
    for position, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--log-format="):
            chosen = arg.split("=", 1)[1]
        elif arg == "--log-format" and position + 1 < len(args):
            chosen = args[position + 1]
    return chosen == "json"


def report_click_error(exc: Exception) -> None:
    """A Click/Typer error (bad flag, bad value, missing input) as one JSON log record on stderr,
    with the same fields as every other `--log-format json` line, instead of Click's usage text."""
    setup_logging(0, "json")
    context = getattr(exc, "ctx", None)
    fields: dict[str, object] = {"exit_code": getattr(exc, "exit_code", 2)}
    if context is not None:
        fields["command"] = context.command_path
    kind = "usage" if isinstance(exc, ClickUsageError) else "error"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    log.error("%s", message, extra={"kind": kind, "fields": fields})


class _OcrpruneGroup(TyperGroup):
    """The `ocrprune` group: under `--log-format json` Click's own errors are JSON lines too."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: object,
    ) -> object:
        argv = list(sys.argv[1:] if args is None else args)
        run = super().main
        if not standalone_mode or not json_logs_requested(argv):
            return run(args, prog_name, complete_var, standalone_mode, **extra)  # type: ignore[arg-type]
        try:
            # Not standalone: Click raises its errors here instead of printing them, and returns
            # the exit code of a `typer.Exit` (None when the command simply returned).
            code = run(argv, prog_name, complete_var, False, **extra)  # type: ignore[arg-type]
        except ClickException as exc:
            report_click_error(exc)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            setup_logging(0, "json")
            log.error("aborted", extra={"kind": "aborted"})
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OcrpruneGroup,
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Batch OCR with DeepSeek-OCR and RTPrune visual-token pruning.\n\n"
    "Run 'ocrprune convert -h' for the options and examples.\n\n" + EXIT_CODES_HELP,
)
log = logging.getLogger("ocrprune")


def _keep_callback(value: str) -> Keep:
    """`--keep` of convert, parsed once: the command receives the typed keep, not the text."""
    try:
        return parse_keep(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _keeps_callback(value: str) -> tuple[Keep, ...]:
    """`--keep` of sweep, parsed once: the command receives the typed keeps, not the text."""
    from ocrprune.sweep.run import parse_keeps

    try:
        return parse_keeps(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


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


def render_timeout_seconds(value: float) -> float | None:
    """`--render-timeout`: 0 (or inf) means no limit, which `RasterConfig` spells None."""
    return None if value == 0 or math.isinf(value) else value


def resolve_password(
    password: str | None, password_file: Path | None
) -> tuple[str | None, str | None]:
    """The PDF password from exactly one of `--password`, `--password-file` or `OCRPRUNE_PASSWORD`,
    and its source as a wrong-password message names it (`--password-file FILE`, ...).

    A file's single trailing newline is dropped (`echo secret > pw` works); two sources at once
    are a usage error, so a forgotten environment variable never silently wins or loses.
    """
    env = os.environ.get(PASSWORD_ENV) or None
    given = [
        name
        for name, value in (
            ("--password", password),
            ("--password-file", password_file),
            (PASSWORD_ENV, env),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise typer.BadParameter(
            f"give the password one way only, not {' and '.join(given)}",
            param_hint="'--password-file'",
        )
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise typer.BadParameter(
                f"cannot read {password_file}: {reason}", param_hint="'--password-file'"
            ) from None
        secret = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        return secret, f"--password-file {password_file}"
    if password is not None:
        return password, "--password"
    return env, (PASSWORD_ENV if env is not None else None)


# Options shared by `convert` and `sweep`, declared once. The ones a nightly job sets every time
# can come from OCRPRUNE_* environment variables (a flag on the command line wins).
PruneMethodOpt = Annotated[
    PruneMethod,
    typer.Option(help="rtprune (norm + OT merge), norm (stage 1 only) or random (same budget)."),
]
ModeOpt = Annotated[
    ModeName,
    typer.Option(envvar="OCRPRUNE_MODE", show_envvar=True, help="DeepSeek-OCR resolution mode."),
]
PromptOpt = Annotated[
    str,
    typer.Option(
        metavar="PRESET|TEXT",
        help="Preset (" + ", ".join(PROMPTS) + ") or custom text containing <image>.",
        callback=_prompt_callback,
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        envvar="OCRPRUNE_MODEL",
        show_envvar=True,
        metavar="ID|PATH",
        help="Hub id, a local folder in the official layout, or tiny-random.",
    ),
]
RevisionOpt = Annotated[
    Optional[str],
    typer.Option(metavar="COMMIT", help="Hub revision (defaults to a pinned commit)."),
]
DeviceOpt = Annotated[
    DeviceName,
    typer.Option(envvar="OCRPRUNE_DEVICE", show_envvar=True, help="Where the model runs."),
]
DtypeOpt = Annotated[
    DtypeName,
    typer.Option(
        envvar="OCRPRUNE_DTYPE", show_envvar=True, help="auto: bf16 on CUDA, fp32 on CPU."
    ),
]
EngineOpt = Annotated[
    Literal["hf", "vllm"],
    typer.Option(
        envvar="OCRPRUNE_ENGINE",
        show_envvar=True,
        help="What decodes: hf (transformers, gapped positions) or vllm "
        "(pip install 'ocrprune[vllm]'; CUDA; compact positions).",
    ),
]
MaxNewTokensOpt = Annotated[int, typer.Option(min=1, max=8192, help="Token limit per page.")]
DpiOpt = Annotated[int, typer.Option(min=18, max=1200, help="PDF rendering resolution.")]
PagesOpt = Annotated[
    Optional[str],
    typer.Option(metavar="RANGES", help="Page ranges, 1-based: 1-3,7.", callback=_pages_callback),
]
PasswordOpt = Annotated[
    Optional[str],
    typer.Option(
        metavar="PASSWORD",
        help="Password for encrypted PDFs. Visible to other users in `ps`: prefer --password-file "
        f"or the {PASSWORD_ENV} environment variable.",
    ),
]
PasswordFileOpt = Annotated[
    Optional[Path],
    typer.Option(
        exists=True,
        dir_okay=False,
        metavar="FILE",
        help="Read the PDF password from FILE (one trailing newline is dropped). "
        f"Or set {PASSWORD_ENV}; "
        "give only one of --password, --password-file and the variable.",
    ),
]
RenderTimeoutOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        metavar="SECONDS",
        help="Seconds one page may take to render before it is marked render_error; 0 = no limit.",
    ),
]
RendererOpt = Annotated[
    RendererName,
    typer.Option(
        help="PDF rasterizer: mupdf (repairs damaged files) or pdfium (permissive licence)."
    ),
]
GlobOpt = Annotated[
    Optional[str],
    typer.Option(metavar="PATTERN", help="Filter for files found in folders, e.g. '*.pdf'."),
]
SeedOpt = Annotated[
    int, typer.Option(help="Seed for --prune-method random and the tiny-random model.")
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Only problems on stderr (failures, warnings); no progress or summary.",
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")]
LogFormatOpt = Annotated[
    LogFormat,
    typer.Option(help="text, or json: every stderr line one JSON object, the summary included."),
]

# Options of `convert` alone.
ConvertInputsArg = Annotated[
    list[str],
    typer.Argument(
        help="PDFs, images, folders (recursive), quoted globs, @list.txt, "
        "or - for paths on stdin.",
        show_default=False,
        metavar="INPUT",
    ),
]
ConvertOutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        envvar="OCRPRUNE_OUT",
        show_envvar=True,
        metavar="DIR",
        help="Output folder (mirrors the input tree).",
    ),
]
BaseOpt = Annotated[
    Optional[Path],
    typer.Option(
        exists=True,
        file_okay=False,
        metavar="DIR",
        show_default="the current folder",
        help="Output paths are the inputs' paths relative to DIR, "
        "the same whatever else is in the run.",
    ),
]
# Declared as text for Click; `_keep_callback` hands the command the parsed `Keep`.
KeepOpt = Annotated[
    str,
    typer.Option(
        envvar="OCRPRUNE_KEEP",
        show_envvar=True,
        metavar="auto|FRACTION",
        help="Visual tokens to keep: 'auto' (RTPrune's per-page ratio) "
        "or a fraction in (0, 1]; 1 = no pruning.",
        callback=_keep_callback,
    ),
]
ConvertBatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        envvar="OCRPRUNE_BATCH_SIZE",
        show_envvar=True,
        help="Pages per GPU batch (default: from free memory and mode).",
    ),
]
PageTimeoutOpt = Annotated[
    Optional[float],
    typer.Option(min=0.1, help="Seconds of generation per batch before pages time out."),
]
NullOpt = Annotated[
    bool,
    typer.Option(
        "--null",
        "-0",
        help="Paths on stdin (-) are separated by NUL bytes, as `find -print0` writes them.",
    ),
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        metavar="md,json",
        help="Output files: md, json or both.",
        callback=_formats_callback,
    ),
]
PageSeparatorOpt = Annotated[
    str,
    typer.Option(
        metavar="TEXT",
        show_default=r"\n\n<--- Page Split --->\n\n",
        help="Text between pages in Markdown.",
    ),
]
StdoutOpt = Annotated[
    bool,
    typer.Option(
        "--stdout",
        help="Write Markdown (one input) or JSON Lines (one line per page) to stdout.",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option(help="Redo documents already converted with the same options.")
]
RetryFailedOpt = Annotated[
    bool,
    typer.Option(
        help="Redo only the pages that failed or were capped in earlier runs; "
        "finished pages are kept."
    ),
]
FailFastOpt = Annotated[bool, typer.Option(help="Stop at the first failure.")]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        show_default=False,
        help="Convert on Ray, one worker per GPU (pip install 'ocrprune[ray]'): alone for a "
        "local Ray, or auto, HOST:PORT, ray://HOST:PORT to join a cluster. --out must be on "
        "a filesystem every worker sees. Put it after the inputs, or write --ray=ADDRESS.",
    ),
]
GpusOpt = Annotated[
    Optional[int],
    typer.Option(min=1, help="With --ray: how many GPU workers (default: the cluster's GPUs)."),
]
RayTimeoutOpt = Annotated[
    float,
    typer.Option(
        min=0.1,
        metavar="SECONDS",
        envvar="OCRPRUNE_RAY_TIMEOUT",
        show_envvar=True,
        help="With --ray: give up reaching (or starting) the cluster after this long, exit 5, "
        "before --out is created or locked.",
    ),
]

# Options of `sweep` alone.
SweepInputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Documents to measure (same forms as for convert).",
        show_default=False,
        metavar="INPUT",
    ),
]
SweepOutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Folder for sweep.json and sweep.png.")
]
# Declared as text for Click; `_keeps_callback` hands the command the parsed keeps.
KeepsOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated keep settings to compare with the unpruned run.",
        callback=_keeps_callback,
    ),
]
ThresholdOpt = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, help="Fidelity the recommended keep must reach (1 - edit distance)."
    ),
]
SweepBatchSizeOpt = Annotated[int, typer.Option(min=1, help="Pages per batch.")]


class StdoutClosed(BaseException):
    """The reader of `--stdout` went away (`| head`): stop the run quietly, as a pipe producer does.

    A BaseException, like KeyboardInterrupt, so a per-document `except Exception` boundary lets it
    through to `_guarded` instead of recording it as a document failure.
    """


class StdoutSink:
    """`emit` for `--stdout`: writes and flushes each document to the saved real stdout.

    On a closed pipe (EPIPE) it points the saved descriptor at /dev/null, so nothing else ever
    writes to the dead pipe (not even the final flush), remembers it in `closed`, and raises
    `StdoutClosed` once; later calls do nothing.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False

    def __call__(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self.discard()
            raise StdoutClosed from None

    def discard(self) -> None:
        """From now on everything written goes to /dev/null."""
        self.closed = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.discard()
            self.stream.flush()


@contextlib.contextmanager
def protected_stdout() -> Iterator[StdoutSink]:
    """Reserve stdout for data: anything else printing to fd 1 (Python or C code) goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    real = os.fdopen(saved, "w", encoding="utf-8", closefd=True)
    old_stdout = sys.stdout
    sys.stdout = sys.stderr
    sink = StdoutSink(real)
    try:
        yield sink
    finally:
        sys.stdout = old_stdout
        sink.flush()
        os.dup2(real.fileno(), 1)
        real.close()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ocrprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Batch OCR with DeepSeek-OCR and RTPrune visual-token pruning."""


class _ConvertCommand(TyperCommand):
    """Lets `--ray` take an optional address, as Click's `flag_value` would (Typer cannot declare
    it): `--ray` last or followed by another option means `--ray=local`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for position, arg in enumerate(args):
            if arg == "--":
                fixed.extend(args[position:])
                break
            following = args[position + 1] if position + 1 < len(args) else None
            if arg == "--ray" and (following is None or (following.startswith("-") and following != "-")):
                fixed.append(f"--ray={RAY_LOCAL}")
            else:
                fixed.append(arg)
        return super().parse_args(ctx, fixed)


@app.command(cls=_ConvertCommand, epilog=CONVERT_EXAMPLES + "\n" + EXIT_CODES_HELP)
def convert(
    inputs: ConvertInputsArg,
    out: ConvertOutOpt = Path("ocrprune-out"),
    base: BaseOpt = None,
    keep: KeepOpt = "auto",
    prune_method: PruneMethodOpt = "rtprune",
    mode: ModeOpt = "gundam",
    prompt: PromptOpt = "markdown",
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "hf",
    batch_size: ConvertBatchSizeOpt = None,
    max_new_tokens: MaxNewTokensOpt = 8192,
    page_timeout: PageTimeoutOpt = None,
    dpi: DpiOpt = 144,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    password_file: PasswordFileOpt = None,
    render_timeout: RenderTimeoutOpt = DEFAULT_RENDER_TIMEOUT,
    renderer: RendererOpt = "mupdf",
    glob: GlobOpt = None,
    null: NullOpt = False,
    format: FormatOpt = "md,json",
    page_separator: PageSeparatorOpt = "\n\n<--- Page Split --->\n\n",
    stdout: StdoutOpt = False,
    force: ForceOpt = False,
    retry_failed: RetryFailedOpt = False,
    fail_fast: FailFastOpt = False,
    ray: RayOpt = None,
    gpus: GpusOpt = None,
    ray_timeout: RayTimeoutOpt = DEFAULT_RAY_TIMEOUT,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Convert documents to Markdown and JSON, with a per-page timing and token report."""
    ray_address = check_convert_flags(inputs, null=null, ray=ray, gpus=gpus, stdout=stdout)
    raster = raster_config(
        dpi=dpi,
        pages=pages,
        password=password,
        password_file=password_file,
        render_timeout=render_timeout,
        renderer=renderer,
    )
    start_logging(quiet, verbose, log_format)
    config = RunConfig(
        inputs=tuple(inputs),
        out=out,
        model=model_config(model, revision, device, dtype, seed),
        # The callback already parsed `--keep`: `keep` holds the typed value.
        prune=PruneConfig(keep=cast(Keep, keep), method=prune_method, seed=seed),
        generation=generation_settings(mode, prompt, max_new_tokens, page_timeout),
        raster=raster,
        formats=parse_formats(format),
        glob=glob,
        batch_size=batch_size,
        page_separator=page_separator,
        stdout=stdout,
        force=force,
        retry_failed=retry_failed,
        fail_fast=fail_fast,
        base=base,
        null_input=null,
        engine=engine,
        ray=ray_address,
        gpus=gpus,
        ray_timeout=ray_timeout,
    )
    raise typer.Exit(_run_convert(config, quiet, log_format))


def check_convert_flags(
    inputs: Sequence[str], *, null: bool, ray: str | None, gpus: int | None, stdout: bool
) -> str | None:
    """The usage errors of flag combinations Click cannot see, in the order `convert` has always
    reported them; returns the Ray address (`parse_ray_address`)."""
    if null and "-" not in inputs:
        raise typer.BadParameter(
            "it applies to paths read from stdin: add - to the inputs", param_hint="'--null'"
        )
    ray_address = parse_ray_address(ray)
    if gpus is not None and ray_address is None:
        raise typer.BadParameter("it applies to --ray runs: add --ray", param_hint="'--gpus'")
    if ray_address is not None and stdout:
        raise typer.BadParameter(
            "--ray writes files into --out; it cannot write to stdout", param_hint="'--ray'"
        )
    return ray_address


def model_config(
    model: str, revision: str | None, device: DeviceName, dtype: DtypeName, seed: int
) -> ModelConfig:
    """The `ModelConfig` of `convert` and `sweep`, from their shared model flags."""
    return ModelConfig(model=model, revision=revision, device=device, dtype=dtype, seed=seed)


def generation_settings(
    mode: ModeName, prompt: str, max_new_tokens: int, page_timeout: float | None = None
) -> GenerationSettings:
    """The `GenerationSettings` of `convert` and `sweep` (`--prompt` already checked by its
    callback, so resolving it cannot fail here; sweep has no `--page-timeout`)."""
    return GenerationSettings(
        mode=mode,
        prompt=resolve_prompt(prompt),
        max_new_tokens=max_new_tokens,
        page_timeout=page_timeout,
    )


def raster_config(
    *,
    dpi: int,
    pages: str | None,
    password: str | None,
    password_file: Path | None,
    render_timeout: float,
    renderer: RendererName,
) -> RasterConfig:
    """The `RasterConfig` of `convert` and `sweep`. Resolving the password may be a usage error
    (two sources, an unreadable file), so both commands build this before logging starts."""
    secret, secret_source = resolve_password(password, password_file)
    return RasterConfig(
        dpi=dpi,
        password=secret,
        password_source=secret_source,
        pages=parse_pages(pages),
        render_timeout=render_timeout_seconds(render_timeout),
        renderer=renderer,
    )


def parse_formats(value: str) -> tuple[str, ...]:
    """`--format` (already checked by its callback) as `RunConfig.formats`: sorted, no repeats."""
    return tuple(sorted({f.strip().lower() for f in value.split(",") if f.strip()}))


def start_logging(quiet: bool, verbose: bool, log_format: LogFormat) -> None:
    """Logging for a command: `-q` shows only problems, `-v` debug lines and tracebacks."""
    setup_logging(-1 if quiet else (1 if verbose else 0), log_format)


_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def parse_ray_address(value: str | None) -> str | None:
    """`--ray` alone means a local Ray (or the one RAY_ADDRESS names): "" for `ray.init`;
    otherwise `auto`, `local`, HOST:PORT or ray://HOST:PORT. Anything else is most likely an
    input the option swallowed (`--ray docs/`), so it is a usage error that says so."""
    if value is None:
        return None
    if value == RAY_LOCAL:
        return ""
    if not _RAY_ADDRESS.match(value):
        raise typer.BadParameter(
            f"{value!r} is not a Ray address (auto, HOST:PORT or ray://HOST:PORT); "
            "to start a local Ray put --ray after the inputs",
            param_hint="'--ray'",
        )
    return value


T = TypeVar("T")


def _guarded(progress: ProgressView | None, work: Callable[[], T]) -> T:
    """Run `work`; the one place that maps exceptions to a one-line message and an exit code."""
    try:
        return work()
    except OcrpruneError as exc:
        log.error("%s", exc)
        raise typer.Exit(int(exc.exit_code)) from None
    except StdoutClosed:
        # The reader took what it wanted: no traceback, no summary; failures already logged
        # before the pipe closed still make the exit code 3.
        log.debug("stdout was closed by its reader; stopping")
        raise typer.Exit(int(ExitCode.PARTIAL if errors_logged() else ExitCode.OK)) from None
    except KeyboardInterrupt:
        log.error("interrupted")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except Exception:  # noqa: BLE001 - a bug: say so, with the traceback, exit 1
        log.error("internal error (this is a bug; please report it)", exc_info=True)
        raise typer.Exit(int(ExitCode.INTERNAL)) from None
    finally:
        if progress is not None:
            progress.close()


def _preflight(model: ModelConfig, engine: str, out: Path | None, on_ray: bool = False) -> None:
    """The cheap environment checks (`preflight.check_run`), before torch, the model or `--out`:
    a failure is one line and its exit code, in well under a second."""
    from ocrprune.preflight import check_run

    _guarded(
        None,
        lambda: check_run(
            model=model.model, device=model.device, engine=engine, out=out, on_ray=on_ray
        ),
    )


def _run_convert(config: RunConfig, quiet: bool, log_format: str) -> int:
    """Run the pipeline and map its outcome or exception to an exit code."""
    _preflight(
        config.model,
        config.engine,
        None if config.stdout else config.out,
        on_ray=config.ray is not None,
    )
    import ocrprune.run as runner

    progress = ProgressView(enabled=not quiet, bar=log_format == "text")
    stdin = sys.stdin if "-" in config.inputs else None

    def work() -> "runner.RunOutcome":
        if config.stdout:
            with protected_stdout() as emit:
                return runner.run(config, progress=progress, stdin=stdin, emit=emit)
        return runner.run(config, progress=progress, stdin=stdin)

    outcome = _guarded(progress, work)
    if not quiet and outcome.report is not None:
        _print_summary(outcome.report, config.out if outcome.report_written else None, log_format)
    return int(outcome.exit_code)


def _print_summary(report: dict[str, object], out: Path | None, log_format: str) -> None:
    """The run summary on stderr: a table, or one `{"event": "summary", ...}` JSON line."""
    if log_format == "json":
        fields = dict(report) | ({"outputs": str(out)} if out is not None else {})
        log.info("summary", extra={"event": "summary", "fields": fields})
        return
    from ocrprune.report import render_summary

    sys.stderr.write(render_summary(report))
    if out is not None:
        sys.stderr.write(f"outputs in {out}/ (report.json, pages.csv)\n")


@app.command(epilog=SWEEP_EXAMPLES + "\n" + EXIT_CODES_HELP)
def sweep(
    inputs: SweepInputsArg,
    out: SweepOutOpt = Path("ocrprune-sweep"),
    keep: KeepsOpt = "1,0.8,0.6,0.4,auto",
    threshold: ThresholdOpt = 0.98,
    prune_method: PruneMethodOpt = "rtprune",
    mode: ModeOpt = "gundam",
    prompt: PromptOpt = "markdown",
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    engine: EngineOpt = "hf",
    batch_size: SweepBatchSizeOpt = 1,
    max_new_tokens: MaxNewTokensOpt = 8192,
    dpi: DpiOpt = 144,
    pages: PagesOpt = None,
    password: PasswordOpt = None,
    password_file: PasswordFileOpt = None,
    render_timeout: RenderTimeoutOpt = DEFAULT_RENDER_TIMEOUT,
    renderer: RendererOpt = "mupdf",
    glob: GlobOpt = None,
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = "text",
) -> None:
    """Run documents unpruned and at each keep setting; report speedup and fidelity, and
    recommend a keep."""
    from ocrprune.sweep.run import SweepConfig, run_sweep

    raster = raster_config(
        dpi=dpi,
        pages=pages,
        password=password,
        password_file=password_file,
        render_timeout=render_timeout,
        renderer=renderer,
    )
    start_logging(quiet, verbose, log_format)
    config = SweepConfig(
        inputs=tuple(inputs),
        out=out,
        # The callback already parsed `--keep`: `keep` holds the typed values.
        keeps=cast("tuple[Keep, ...]", keep),
        threshold=threshold,
        model=model_config(model, revision, device, dtype, seed),
        generation=generation_settings(mode, prompt, max_new_tokens),
        raster=raster,
        method=prune_method,
        seed=seed,
        batch_size=batch_size,
        glob=glob,
        engine=engine,
    )
    _preflight(config.model, config.engine, config.out)
    progress = ProgressView(enabled=not quiet, bar=log_format == "text")
    report = _guarded(progress, lambda: run_sweep(config, progress=progress))
    _print_sweep_summary(report, quiet, log_format)
    raise typer.Exit(int(report.exit_code))


def _print_sweep_summary(report: "SweepReport", quiet: bool, log_format: str) -> None:
    """The sweep's summary on stderr: its table, or one `{"event": "summary", ...}` JSON line
    (the report without its per-page rows)."""
    from ocrprune.sweep.run import render_sweep_table

    if not quiet and log_format == "json":
        fields = {k: v for k, v in json.loads(report.to_json()).items() if k != "pages"}
        log.info("summary", extra={"event": "summary", "fields": fields})
    elif not quiet:
        sys.stderr.write(render_sweep_table(report))


def main() -> None:
    """Console entry point."""
    try:
        # One program name however it was started (`ocrprune`, `python -m ocrprune`), so usage
        # lines and the shell-completion script name the command users type.
        app(prog_name="ocrprune")
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
