"""The command line's conventions and options: -h, completion, choices and examples in --help,
OCRPRUNE_* defaults, password sources, the flags that map to RunConfig fields, JSON summaries,
a closed --stdout pipe, and starting without torch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_page
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune.cli import StdoutClosed, StdoutSink, app
from ocrprune.config import RunConfig
from ocrprune.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "--model",
    "tiny-random",
    "--device",
    "cpu",
    "--mode",
    "tiny",
    "--max-new-tokens",
    "8",
    "--batch-size",
    "4",
]
ENV_NAMES = (
    "OCRPRUNE_MODEL",
    "OCRPRUNE_OUT",
    "OCRPRUNE_DEVICE",
    "OCRPRUNE_MODE",
    "OCRPRUNE_KEEP",
    "OCRPRUNE_DTYPE",
    "OCRPRUNE_BATCH_SIZE",
    "OCRPRUNE_PASSWORD",
)


def invoke(args: list[str], env: dict[str, str] | None = None, input: str | None = None):
    """Run the app in-process with every OCRPRUNE_* variable unset unless given."""
    clean: dict[str, str | None] = {name: None for name in ENV_NAMES}
    return CliRunner(env={**clean, **(env or {})}).invoke(app, args, input=input)


def flat(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def captured(monkeypatch) -> dict:
    """Replace the pipeline with one that records the RunConfig it was given."""
    seen: dict = {}

    def fake_run(config, *, progress=None, stdin=None, emit=None, engine_factory=None):
        seen["config"] = config
        return runner.RunOutcome(summary=None, docs=[], report=None, exit_code=ExitCode.OK)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "run", fake_run)
    return seen


def config_for(captured: dict, args: list[str], env: dict[str, str] | None = None) -> RunConfig:
    result = invoke(["convert", "a.pdf", *args], env=env)
    assert result.exit_code == 0, result.output
    return captured["config"]


# -- conventions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["convert"], ["sweep"]])
def test_short_h_is_help(command):
    short, long = invoke([*command, "-h"]), invoke([*command, "--help"])
    assert (short.exit_code, long.exit_code) == (0, 0)
    assert short.output == long.output and short.output.startswith("Usage: ")


def test_help_lists_each_options_choices():
    text = flat(invoke(["convert", "--help"]).output)
    for shown in (
        "--mode <tiny|small|base|large|gundam>",
        "--device <auto|cuda|cpu>",
        "--dtype <auto|bf16|fp32>",
        "--prune-method <rtprune|norm|random>",
        "--renderer <mupdf|pdfium>",
        "--log-format <text|json>",
    ):
        assert shown in text


def test_help_names_the_environment_variables_and_shows_examples():
    text = flat(invoke(["convert", "--help"]).output)
    for name in ENV_NAMES[:-1]:
        assert f"env var: {name}" in text
    assert "prefer --password-file or the OCRPRUNE_PASSWORD environment variable" in text
    assert "Examples: ocrprune convert scans/ --out out/" in text
    assert "find inbox -name '*.pdf' -print0 | ocrprune convert - -0 --out out/" in text
    assert "Examples: ocrprune sweep samples/" in flat(invoke(["sweep", "--help"]).output)


def test_version_prints_the_package_version():
    from ocrprune import __version__

    result = invoke(["--version"])
    assert (result.exit_code, result.output) == (0, f"ocrprune {__version__}\n")


def run_module(
    *args: str, env: dict[str, str] | None = None, stdout: int = subprocess.PIPE
) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    full_env.update(PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run(
        [sys.executable, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=120,
    )


def test_shell_completion_script_and_completions_name_ocrprune():
    script = run_module("-m", "ocrprune", "--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _ocrprune_completion ocrprune" in script.stdout
    assert "--install-completion" in invoke(["--help"]).output
    words = {
        "_OCRPRUNE_COMPLETE": "complete_bash",
        "COMP_WORDS": "ocrprune convert --mode ",
        "COMP_CWORD": "3",
    }
    completed = run_module("-m", "ocrprune", env=words)
    assert completed.stdout.split() == ["tiny", "small", "base", "large", "gundam"]


# -- OCRPRUNE_* defaults ---------------------------------------------------------------------------
NIGHTLY = {
    "OCRPRUNE_MODEL": "tiny-random",
    "OCRPRUNE_OUT": "/srv/ocr",
    "OCRPRUNE_DEVICE": "cpu",
    "OCRPRUNE_MODE": "tiny",
    "OCRPRUNE_KEEP": "0.4",
    "OCRPRUNE_DTYPE": "fp32",
    "OCRPRUNE_BATCH_SIZE": "3",
}


def test_environment_variables_set_the_defaults(captured):
    config = config_for(captured, [], env=NIGHTLY)
    assert config.out == Path("/srv/ocr")
    assert (config.model.model, config.model.device, config.model.dtype) == (
        "tiny-random",
        "cpu",
        "fp32",
    )
    assert (config.generation.mode, config.prune.keep, config.batch_size) == ("tiny", 0.4, 3)


def test_flags_win_over_environment_variables(captured):
    args = [
        "--out",
        "here",
        "--mode",
        "base",
        "--keep",
        "1",
        "--device",
        "auto",
        "--batch-size",
        "1",
    ]
    config = config_for(captured, args, env=NIGHTLY)
    assert (config.out, config.generation.mode, config.prune.keep) == (Path("here"), "base", 1.0)
    assert (config.model.device, config.batch_size) == ("auto", 1)


def test_without_environment_variables_the_documented_defaults_hold(captured):
    config = config_for(captured, [])
    assert (config.out, config.generation.mode, config.prune.keep) == (
        Path("ocrprune-out"),
        "gundam",
        "auto",
    )
    assert (config.model.model, config.model.device, config.batch_size) == (
        "deepseek-ai/DeepSeek-OCR",
        "auto",
        None,
    )


@pytest.mark.parametrize(
    ("name", "value", "flag"),
    [
        ("OCRPRUNE_MODE", "huge", "--mode"),
        ("OCRPRUNE_DEVICE", "gpu", "--device"),
        ("OCRPRUNE_DTYPE", "fp16", "--dtype"),
        ("OCRPRUNE_KEEP", "2", "--keep"),
        ("OCRPRUNE_BATCH_SIZE", "0", "--batch-size"),
    ],
)
def test_a_bad_environment_value_is_a_usage_error_naming_the_variable(captured, name, value, flag):
    result = invoke(["convert", "a.pdf"], env={name: value})
    assert result.exit_code == 2
    assert f"Invalid value for '{flag}' (env var: '{name}')" in flat(result.output)
    assert "config" not in captured


# -- flags that map to config fields ---------------------------------------------------------------
def test_new_flags_reach_the_run_config(captured, tmp_path):
    args = ["--base", str(tmp_path), "--render-timeout", "5", "--renderer", "pdfium"]
    config = config_for(captured, args)
    assert config.base == tmp_path
    assert (config.raster.render_timeout, config.raster.renderer) == (5.0, "pdfium")


def test_new_flags_default_to_the_current_folder_a_minute_and_mupdf(captured):
    config = config_for(captured, [])
    assert (config.base, config.raster.render_timeout, config.raster.renderer) == (
        None,
        60.0,
        "mupdf",
    )


def test_render_timeout_0_means_no_limit(captured):
    assert config_for(captured, ["--render-timeout", "0"]).raster.render_timeout is None


@pytest.mark.parametrize(
    "args",
    [
        ["--render-timeout", "-1"],
        ["--render-timeout", "nan"],
        ["--renderer", "poppler"],
        ["--base", "/no/such/dir"],
    ],
)
def test_bad_values_for_the_new_flags_are_usage_errors(captured, args):
    result = invoke(["convert", "a.pdf", *args])
    assert result.exit_code == 2
    assert f"Invalid value for '{args[0]}'" in result.output


def test_base_must_be_a_folder(captured, tmp_path):
    (tmp_path / "f").write_text("x")
    result = invoke(["convert", "a.pdf", "--base", str(tmp_path / "f")])
    assert result.exit_code == 2 and "is a file" in result.output


def test_null_without_stdin_input_is_a_usage_error(captured):
    result = invoke(["convert", "a.pdf", "-0"])
    assert result.exit_code == 2
    assert "'--null': it applies to paths read from stdin: add - to the inputs" in result.output


@pytest.mark.skipif(
    "null_input" not in {f.name for f in dataclasses.fields(RunConfig)},
    reason="RunConfig.null_input lands with the lead's config change",
)
@pytest.mark.parametrize(("flag", "expected"), [(["-0"], True), (["--null"], True), ([], False)])
def test_null_reaches_the_run_config(captured, flag, expected):
    result = invoke(["convert", "-", *flag], input="a.pdf\0b.pdf\0")
    assert result.exit_code == 0, result.output
    assert captured["config"].null_input is expected


def _counting_parse_keep(monkeypatch, module) -> list[str]:
    """Record every text `parse_keep` is given through `module`'s name for it."""
    import ocrprune.config as config

    seen: list[str] = []

    def counting(text: str):
        seen.append(text)
        return config.parse_keep(text)

    monkeypatch.setattr(module, "parse_keep", counting)
    return seen


def test_convert_parses_keep_once_and_the_config_holds_the_typed_value(captured, monkeypatch):
    import ocrprune.cli as cli

    seen = _counting_parse_keep(monkeypatch, cli)
    config = config_for(captured, ["--keep", " 0.50 "])
    assert seen == [" 0.50 "] and config.prune.keep == 0.5
    seen.clear()
    assert config_for(captured, ["--keep", "AUTO"]).prune.keep == "auto" and seen == ["AUTO"]


def test_sweep_parses_each_keep_once_and_the_config_holds_the_typed_values(monkeypatch):
    import ocrprune.sweep.run as sweep_run

    seen = _counting_parse_keep(monkeypatch, sweep_run)
    configs = []

    def fake_sweep(config, *, progress=None):
        configs.append(config)
        return dataclasses.make_dataclass("Report", [("exit_code", int)])(0)

    monkeypatch.setattr(sweep_run, "run_sweep", fake_sweep)
    args = ["sweep", "a.pdf", "--keep", "1,0.4,auto", "--model", "tiny-random", "--device", "cpu", "-q"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert seen == ["1", "0.4", "auto"]
    assert configs[0].keeps == (1.0, 0.4, "auto") and configs[0].labels == ["1", "0.4", "auto"]


def test_configs_validate_a_typed_keep_and_do_not_parse_text(tmp_path):
    from ocrprune.config import PruneConfig
    from ocrprune.sweep.run import SweepConfig

    assert PruneConfig(keep=1).keep == 1 and PruneConfig(keep="auto").keep == "auto"
    for bad, shown in ((0.0, "0.0"), (2, "2.0"), (float("nan"), "nan"), ("0.5", "'0.5'")):
        message = f"keep must be 'auto' or a number in (0, 1], got {shown}"
        with pytest.raises(ValueError, match=re.escape(message)):
            PruneConfig(keep=bad)
        with pytest.raises(ValueError, match=re.escape(message)):
            SweepConfig(inputs=("x",), out=tmp_path, keeps=(0.4, bad))


# -- passwords -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "password"),
    [
        ("s3cret pw\n", "s3cret pw"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("two\n\n", "two\n"),
    ],
)
def test_password_file_is_read_without_its_trailing_newline(captured, tmp_path, content, password):
    (tmp_path / "pw").write_bytes(content.encode())
    config = config_for(captured, ["--password-file", str(tmp_path / "pw")])
    assert config.raster.password == password


def test_password_comes_from_the_environment(captured):
    assert (
        config_for(captured, [], env={"OCRPRUNE_PASSWORD": "from env"}).raster.password
        == "from env"
    )
    assert (
        config_for(captured, ["--password", "argv"], env={"OCRPRUNE_PASSWORD": ""}).raster.password
        == "argv"
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--password", "a", "--password-file", "PW"], {}, "--password and --password-file"),
        (["--password", "a"], {"OCRPRUNE_PASSWORD": "b"}, "--password and OCRPRUNE_PASSWORD"),
        (
            ["--password-file", "PW"],
            {"OCRPRUNE_PASSWORD": "b"},
            "--password-file and OCRPRUNE_PASSWORD",
        ),
    ],
)
def test_two_password_sources_are_a_usage_error(captured, tmp_path, args, env, named):
    (tmp_path / "pw").write_text("x\n")
    args = [str(tmp_path / "pw") if a == "PW" else a for a in args]
    result = invoke(["convert", "a.pdf", *args], env=env)
    assert result.exit_code == 2
    assert f"give the password one way only, not {named}" in flat(result.output)
    assert "config" not in captured


def test_missing_password_file_is_a_usage_error(captured, tmp_path):
    result = invoke(["convert", "a.pdf", "--password-file", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert (
        "Invalid value for '--password-file'" in result.output and "does not exist" in result.output
    )


def test_sweep_takes_the_same_raster_and_password_options(monkeypatch, tmp_path):
    import ocrprune.sweep.run

    seen: dict = {}

    class Done:
        exit_code = ExitCode.OK

    def fake_sweep(config, *, progress=None, engine_factory=None):
        seen["config"] = config
        return Done()

    monkeypatch.setattr(ocrprune.sweep.run, "run_sweep", fake_sweep)
    (tmp_path / "pw").write_text("pw\n")
    args = [
        "sweep",
        "a.pdf",
        "-q",
        "--password-file",
        str(tmp_path / "pw"),
        "--renderer",
        "pdfium",
        "--render-timeout",
        "0",
    ]
    result = invoke(args, env={"OCRPRUNE_MODE": "small"})
    assert result.exit_code == 0, result.output
    raster = seen["config"].raster
    assert (raster.password, raster.renderer, raster.render_timeout) == ("pw", "pdfium", None)
    assert seen["config"].generation.mode == "small"


# -- JSON logs: every stderr line, the summary included --------------------------------------------
def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_log_format_makes_the_summary_one_json_record(tmp_path):
    out = tmp_path / "out"
    result = invoke(
        ["convert", str(tmp_path / "missing.pdf"), "--out", str(out), "--log-format", "json", *FAST]
    )
    assert result.exit_code == 4, result.output
    records = json_lines(result.stderr)  # raises if any line is not JSON
    assert records[0]["level"] == "error" and records[0]["file"] == str(tmp_path / "missing.pdf")
    summary = records[-1]
    assert (summary["event"], summary["message"], summary["level"]) == (
        "summary",
        "summary",
        "info",
    )
    assert summary["documents"] == {"total": 1, "ok": 0, "failed": 1, "skipped": 0, "skipped_not_ok": 0, "not_reached": 0}
    assert (summary["exit_code"], summary["outputs"]) == (4, str(out))
    assert [r.get("event") for r in records].count("summary") == 1


def test_quiet_json_prints_failures_but_no_summary(tmp_path):
    args = [
        "convert",
        str(tmp_path / "missing.pdf"),
        "--out",
        str(tmp_path / "out"),
        "--log-format",
        "json",
        "-q",
    ]
    result = invoke([*args, *FAST])
    assert result.exit_code == 4
    records = json_lines(result.stderr)
    assert [(r["level"], r.get("kind")) for r in records] == [("error", "missing")]


def test_sweep_json_summary_is_one_record_without_per_page_rows(tmp_path):
    args = [
        "sweep",
        str(tmp_path / "missing.pdf"),
        "--out",
        str(tmp_path / "sweep"),
        "--log-format",
        "json",
    ]
    result = invoke([*args, *FAST])
    assert result.exit_code == 4, result.output
    summary = json_lines(result.stderr)[-1]
    assert (summary["event"], summary["pages_compared"], "pages" in summary) == (
        "summary",
        0,
        False,
    )


# -- a closed --stdout pipe ------------------------------------------------------------------------
def test_stdout_sink_turns_a_closed_pipe_into_one_quiet_stop():
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w", encoding="utf-8")
    sink = StdoutSink(stream)
    with pytest.raises(StdoutClosed):
        sink("first document\n")
    assert sink.closed is True
    sink("second document\n")  # nothing is raised twice
    assert os.write(stream.fileno(), b"x") == 1  # the descriptor now points at /dev/null
    sink.flush()
    stream.close()


def run_into_closed_pipe(inputs: list[str]) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head`) is already gone
    try:
        # 64 tokens: the tiny model reaches end-of-sequence, so the pages are `ok` (a capped page
        # would rightly make the exit code 3).
        args = [*inputs, "--stdout", *FAST, "--max-new-tokens", "64"]
        return run_module("-m", "ocrprune", "convert", *args, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.slow  # a real process importing torch; fast: test_stdout_closed_in_process_by_its_reader_ends_quietly_with_exit_0
def test_stdout_closed_by_its_reader_ends_quietly_with_exit_0(tmp_path):
    for name in ("a.png", "b.png"):
        draw_page((200, 260), seed=5).save(tmp_path / name)
    done = run_into_closed_pipe([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    assert done.returncode == 0, done.stderr
    for noise in ("Traceback", "internal error", "BrokenPipe", "Exception ignored", "ocrprune run"):
        assert noise not in done.stderr


@pytest.mark.slow  # a real process importing torch; fast: test_stdout_closed_in_process_after_a_failure_exits_3
def test_stdout_closed_after_a_failure_exits_3(tmp_path):
    draw_page((200, 260), seed=5).save(tmp_path / "a.png")
    done = run_into_closed_pipe([str(tmp_path / "missing.png"), str(tmp_path / "a.png")])
    assert done.returncode == 3, done.stderr
    assert "missing.png: missing" in done.stderr and "Traceback" not in done.stderr


def closed_stdout_in_process(inputs: list[str], capfd) -> subprocess.CompletedProcess:
    """`run_into_closed_pipe` in this process: file descriptor 1 is a pipe whose reader is gone
    while the command runs (`--stdout` writes there), then pytest's capture again."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    capfd.readouterr()
    saved = os.dup(1)
    os.dup2(write_end, 1)
    os.close(write_end)
    try:
        result = invoke(["convert", *inputs, "--stdout", *FAST, "--max-new-tokens", "64"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return subprocess.CompletedProcess(inputs, result.exit_code, "", result.stderr + capfd.readouterr().err)


def test_stdout_closed_in_process_by_its_reader_ends_quietly_with_exit_0(tmp_path, capfd):
    for name in ("a.png", "b.png"):
        draw_page((200, 260), seed=5).save(tmp_path / name)
    done = closed_stdout_in_process([str(tmp_path / "a.png"), str(tmp_path / "b.png")], capfd)
    assert done.returncode == 0, done.stderr
    for noise in ("Traceback", "internal error", "BrokenPipe", "Exception ignored", "ocrprune run"):
        assert noise not in done.stderr


def test_stdout_closed_in_process_after_a_failure_exits_3(tmp_path, capfd):
    draw_page((200, 260), seed=5).save(tmp_path / "a.png")
    done = closed_stdout_in_process([str(tmp_path / "missing.png"), str(tmp_path / "a.png")], capfd)
    assert done.returncode == 3, done.stderr
    assert "missing.png: missing" in done.stderr and "Traceback" not in done.stderr


# -- starting without torch ------------------------------------------------------------------------
def imported(stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["convert", "--help"], ["convert", "a.pdf", "--mode", "x"]]
)
def test_help_version_and_usage_errors_do_not_import_torch(args):
    done = run_module("-X", "importtime", "-m", "ocrprune", *args)
    assert done.returncode == (2 if "x" in args else 0), done.stderr
    assert "typer" in imported(done.stderr)
    assert not {"torch", "transformers", "numpy"} & imported(done.stderr)


def test_a_missing_input_fails_fast_without_importing_torch(tmp_path):
    """Needs the pipeline to expand inputs and check --out before loading the runtime (#8.8)."""
    done = run_module(
        "-X",
        "importtime",
        "-m",
        "ocrprune",
        "convert",
        str(tmp_path / "nope.pdf"),
        "--out",
        str(tmp_path / "o"),
    )
    assert done.returncode == 4, done.stderr
    assert "nope.pdf: missing: no such file or folder" in done.stderr
    assert not {"torch", "transformers"} & imported(done.stderr)


# -- one exit-code table for --help and the README (#15 item 13) ---------------------------------
def readme_exit_codes() -> list[tuple[str, str]]:
    """The rows of the README's "### Exit codes" table, as (code, meaning)."""
    section = (REPO / "README.md").read_text().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]  # header, rule
    return [tuple(cell.strip() for cell in row.strip().strip("|").split("|", 1)) for row in rows]  # type: ignore[misc]


def test_readme_exit_code_table_is_the_one_help_prints():
    from ocrprune.errors import EXIT_CODE_TABLE

    assert readme_exit_codes() == list(EXIT_CODE_TABLE)
    assert [code for code, _ in EXIT_CODE_TABLE][:-1] == [str(int(c)) for c in ExitCode][:-1]
    assert EXIT_CODE_TABLE[-1][0] == f"{int(ExitCode.INTERRUPTED)}, 143, 129"


@pytest.mark.parametrize("command", [[], ["convert"], ["sweep"]])
def test_help_prints_every_row_of_the_exit_code_table(command):
    from ocrprune.errors import EXIT_CODE_TABLE

    result = invoke([*command, "--help"])
    assert result.exit_code == 0
    for code, meaning in EXIT_CODE_TABLE:
        assert flat(f"{code} {meaning.replace('`', '')}") in flat(result.output)
    table = result.output.split("Exit codes:", 1)[1]
    assert max(len(line) for line in table.splitlines()) <= 80  # wrapped for a terminal


def test_retry_failed_help_says_it_redoes_pages():
    result = invoke(["convert", "--help"])
    assert (
        "--retry-failed / --no-retry-failed Redo only the pages that failed or were capped in earlier runs; "
        "finished pages are kept." in flat(result.output)
    )


# -- the password's source reaches the raster config (#15 item 13) ---------------------------------
def test_the_password_source_is_recorded_for_the_error_message(captured, tmp_path):
    (tmp_path / "pw.txt").write_text("s3cret\n")
    from_file = config_for(captured, ["--password-file", str(tmp_path / "pw.txt")]).raster
    from_env = config_for(captured, [], env={"OCRPRUNE_PASSWORD": "e"}).raster
    from_flag = config_for(captured, ["--password", "p"]).raster
    none = config_for(captured, []).raster
    assert [r.password_source for r in (from_file, from_env, from_flag, none)] == [
        f"--password-file {tmp_path / 'pw.txt'}", "OCRPRUNE_PASSWORD", "--password", None,
    ]  # fmt: skip
    assert from_file.password_problem(wrong=True) == f"the password in --password-file {tmp_path / 'pw.txt'} is wrong"
    assert from_env.password_problem(wrong=True) == (
        "the password in OCRPRUNE_PASSWORD is wrong; prefer --password-file FILE"
    )
    assert from_flag.password_problem(wrong=True) == (
        "the password given with --password is wrong; prefer --password-file FILE (--password shows in ps)"
    )
    assert none.password_problem(wrong=False) == (
        "needs a password; put it in a file and pass --password-file FILE (or set OCRPRUNE_PASSWORD)"
    )


@pytest.mark.parametrize("source", ["file", "env"])
def test_a_wrong_password_is_reported_with_its_source(tmp_path, source):
    from docgen import make_encrypted_pdf

    make_encrypted_pdf(tmp_path / "locked.pdf", "right")
    (tmp_path / "pw.txt").write_text("wrong\n")
    args = ["--password-file", str(tmp_path / "pw.txt")] if source == "file" else []
    env = {"OCRPRUNE_PASSWORD": "wrong"} if source == "env" else {}
    result = invoke(
        ["convert", str(tmp_path / "locked.pdf"), "--out", str(tmp_path / "out"), *FAST, *args], env=env
    )
    named = f"--password-file {tmp_path / 'pw.txt'} is wrong" if source == "file" else (
        "OCRPRUNE_PASSWORD is wrong; prefer --password-file FILE"
    )
    assert result.exit_code == 4
    assert f"locked.pdf: encrypted: the password in {named}" in result.output


# -- usage errors under --log-format json are JSON (#15 item 12) ----------------------------------
def usage_records(args: list[str]) -> tuple[int, list[dict]]:
    """Run the real entry point; (exit code, stderr parsed as JSON lines without their time)."""
    done = run_module("-m", "ocrprune", *args)
    assert done.stdout == ""
    records = [json.loads(line) for line in done.stderr.splitlines()]
    for record in records:
        assert isinstance(record.pop("time"), float)
    return done.returncode, records


@pytest.mark.parametrize(
    ("args", "message", "command"),
    [
        (
            ["convert", "a.pdf", "--bogus", "--log-format", "json"],
            "No such option: --bogus (Possible options: --gpus, --out, --verbose)",
            "ocrprune convert",
        ),
        (
            ["convert", "--log-format=json", "a.pdf", "--mode", "huge"],
            "Invalid value for '--mode' (env var: 'OCRPRUNE_MODE'): Value error, 'huge' is not one of "
            "'tiny', 'small', 'base', 'large', 'gundam'.",
            "ocrprune convert",
        ),
        (["convert", "--log-format", "json"], "Missing argument 'INPUT'.", "ocrprune convert"),
        (["bogus", "--log-format", "json"], "No such command 'bogus'.", "ocrprune"),
        (
            ["convert", "a.pdf", "--null", "--log-format", "json"],
            "Invalid value for '--null': it applies to paths read from stdin: add - to the inputs",
            "ocrprune convert",
        ),
        (
            ["sweep", "a.pdf", "--keep", "2", "--log-format", "json"],
            "Invalid value for '--keep': keep must be 'auto' or a number in (0, 1], got '2'",
            "ocrprune sweep",
        ),
    ],
)
def test_usage_errors_are_one_json_record_with_json_logs(args, message, command):
    code, records = usage_records(args)
    assert code == 2
    assert records == [
        {"level": "error", "message": message, "kind": "usage", "exit_code": 2, "command": command}
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["convert", "a.pdf", "--bogus"],
        ["convert", "a.pdf", "--log-format", "json", "--log-format", "text", "--bogus"],
        ["convert", "a.pdf", "--bogus", "--", "--log-format", "json"],
    ],
)
def test_usage_errors_stay_click_text_without_json_logs(args):
    done = run_module("-m", "ocrprune", *args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "Usage: ocrprune convert [OPTIONS] {INPUT}...",
        "Try 'ocrprune convert -h' for help.",
        "",
        "Error: No such option: --bogus (Possible options: --gpus, --out, --verbose)",
    ]


def test_json_logs_do_not_change_help_or_exit_codes(tmp_path):
    helped = run_module("-m", "ocrprune", "convert", "--log-format", "json", "--help")
    assert helped.returncode == 0 and "Exit codes:" in helped.stdout and helped.stderr == ""
    (tmp_path / "e.pdf").write_bytes(b"")
    code, records = usage_records(
        ["convert", str(tmp_path / "e.pdf"), "--out", str(tmp_path / "o"), "--log-format", "json", "-q"]
    )
    assert code == 4  # the run's own exit code comes through
    assert [(r["level"], r.get("kind")) for r in records] == [("error", "empty")]


def test_usage_errors_in_process_are_json_too(tmp_path):
    """Through CliRunner (the group's own `main`), not only through `ocrprune.cli.main`."""
    result = invoke(["convert", "a.pdf", "--dpi", "5", "--log-format", "json"])
    assert result.exit_code == 2
    record = json.loads(result.output)
    assert (record["kind"], record["command"]) == ("usage", "root convert")  # CliRunner names it root
    assert record["message"] == "Invalid value for '--dpi': Input should be greater than or equal to 18"
