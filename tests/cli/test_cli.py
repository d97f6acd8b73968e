"""End-to-end runs of `ocrprune convert` with the tiny random model on files built in code:
exit codes, honest per-page statuses, resume, stdout purity, safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_page
from docgen import make_encrypted_pdf, make_multiframe_tiff, make_pdf
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune.cli import app
from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RunConfig
from ocrprune.runtime.api import BackendBase

REPO = Path(__file__).resolve().parents[2]
FAST = ["--model", "tiny-random", "--device", "cpu", "--mode", "tiny", "--max-new-tokens", "64", "--batch-size", "4"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run from the test's folder: it is the default --base, so output names are short and stable."""
    monkeypatch.chdir(tmp_path)


def convert(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["convert", *args, *FAST], input=input)


def pages_of(json_path: Path) -> list[tuple[int, str]]:
    doc = json.loads(json_path.read_text())
    return [(p["page"], p["status"]) for p in doc["pages"]]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    make_pdf(folder / "a" / "report.pdf", pages=3)
    make_pdf(folder / "b" / "report.pdf", pages=1)
    draw_page((300, 400), seed=3).save(folder / "scan.png")
    return folder


def test_a_folder_of_good_documents_converts_and_exits_0(docs, tmp_path):
    out = tmp_path / "out"
    result = convert(str(docs), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert pages_of(out / "in" / "a" / "report.pdf.json") == [(1, "ok"), (2, "ok"), (3, "ok")]
    assert pages_of(out / "in" / "b" / "report.pdf.json") == [(1, "ok")]  # same name, no collision
    markdown = (out / "in" / "a" / "report.pdf.md").read_text()
    assert markdown.count("<--- Page Split --->") == 2
    report = json.loads((out / "report.json").read_text())
    assert report["pages"]["by_status"]["ok"] == 5
    assert (out / "pages.csv").read_text().count("\n") == 1 + 5
    page = json.loads((out / "in" / "scan.png.json").read_text())["pages"][0]
    assert set(page["tokens"]) >= {"visual_total", "visual_kept", "prompt", "generated"}
    assert set(page["timings_ms"]) == {"render", "preprocess", "encode", "prune", "prefill", "decode", "total"}
    assert page["tokens"]["visual_total"] == 64 and page["keep"]["setting"] == "auto"
    assert "tiny-random" in result.output


def test_bad_inputs_are_named_and_the_batch_goes_on_with_exit_3(tmp_path):
    folder = tmp_path / "in"
    make_pdf(folder / "good.pdf", pages=2)
    (folder / "empty.pdf").write_bytes(b"")
    (folder / "text.pdf").write_text("not a pdf at all\n")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    make_encrypted_pdf(folder / "locked.pdf", "pw")
    make_multiframe_tiff(folder / "frames.tif", frames=3)
    names = ["good.pdf", "empty.pdf", "text.pdf", "corrupt.pdf", "locked.pdf", "frames.tif"]
    out = tmp_path / "out"
    result = convert(*[str(folder / n) for n in names], "--out", str(out))
    assert result.exit_code == 3, result.output
    assert pages_of(out / "in" / "good.pdf.json") == [(1, "ok"), (2, "ok")]
    assert pages_of(out / "in" / "frames.tif.json") == [(1, "ok"), (2, "ok"), (3, "ok")]  # every frame is a page
    for name, kind in [("empty.pdf", "empty"), ("text.pdf", "not_a_document"), ("corrupt.pdf", "corrupt"), ("locked.pdf", "encrypted")]:
        lines = [line for line in result.output.splitlines() if name in line and kind in line]
        assert len(lines) == 1, (name, result.output)
    report = json.loads((out / "report.json").read_text())
    assert report["failures_by_kind"] == {"corrupt": 1, "empty": 1, "encrypted": 1, "not_a_document": 1}
    # With the password the encrypted file converts.
    again = convert(str(folder / "locked.pdf"), "--out", str(out), "--password", "pw")
    assert again.exit_code == 0, again.output
    assert pages_of(out / "in" / "locked.pdf.json") == [(1, "ok"), (2, "ok")]


def test_nothing_usable_exits_4(tmp_path):
    (tmp_path / "x.pdf").write_bytes(b"")
    result = convert(str(tmp_path / "x.pdf"), str(tmp_path / "missing.pdf"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 4, result.output


@pytest.mark.parametrize("keep", ["0", "-0.5", "1.5", "nan", "fourty", ""])
def test_bad_keep_values_are_usage_errors(tmp_path, keep):
    result = convert(str(tmp_path), "--keep", keep)
    assert result.exit_code == 2
    assert "keep" in result.output


def test_unwritable_output_exits_6(docs, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = convert(str(docs), "--out", str(blocker / "out"))
    assert result.exit_code == 6, result.output


def test_model_that_cannot_load_exits_5(docs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    args = ["convert", str(docs), "--out", str(tmp_path / "out"), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 5
    assert "--model PATH" in result.output


def test_list_file_and_stdin_inputs(docs, tmp_path):
    listing = tmp_path / "todo.txt"
    listing.write_text(f"# pages to do\n{docs / 'scan.png'}\n\n{docs / 'b' / 'report.pdf'}\n")
    out = tmp_path / "out1"
    assert convert(f"@{listing}", "--out", str(out)).exit_code == 0
    assert sorted(p.name for p in out.rglob("*.md")) == ["report.pdf.md", "scan.png.md"]
    out = tmp_path / "out2"
    result = convert("-", "--out", str(out), input=f"{docs / 'scan.png'}\n")
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.rglob("*.md")] == ["scan.png.md"]


def test_list_file_and_stdin_with_a_bom_and_crlf_convert_every_listed_input(docs, tmp_path):
    listing = tmp_path / "todo.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{docs / 'scan.png'}\r\n{docs / 'b' / 'report.pdf'}\r\n".encode())
    out = tmp_path / "out1"
    result = convert(f"@{listing}", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.rglob("*.md")) == ["report.pdf.md", "scan.png.md"]
    out = tmp_path / "out2"
    result = convert("-", "--out", str(out), input=f"\ufeff{docs / 'scan.png'}\r\n{docs / 'b' / 'report.pdf'}\r\n")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.rglob("*.md")) == ["report.pdf.md", "scan.png.md"]


def test_json_lines_keep_is_an_object_on_page_and_document_error_lines(docs, tmp_path, capfd):
    """Every field a page line and a document_error line share has one JSON type (#15 item 13)."""
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    done = stdout_in_process([str(docs / "b" / "report.pdf"), str(tmp_path / "broken.pdf"), "--stdout"], capfd)
    assert done.returncode == 3, done.stderr
    records = {r["status"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert sorted(records) == ["document_error", "ok"]
    page, failed = records["ok"], records["document_error"]
    assert (page["page"], failed["page"]) == (1, None)
    assert failed["keep"] == {"setting": "auto", "ratio": 0.0, "method": "rtprune", "r_txt": None, "r_sim": None}
    assert set(page["keep"]) == set(failed["keep"])
    nullable = {"page", "error", "error_kind"}  # int or null; text or null; text or null
    shared = (set(page) & set(failed)) - nullable
    assert len(shared) >= 15
    assert {k: type(failed[k]) for k in shared} == {k: type(page[k]) for k in shared}
    assert (page["error"], page["error_kind"]) == (None, None)
    assert isinstance(failed["error"], str) and failed["error_kind"] == "corrupt"


def test_page_ranges_select_pages(tmp_path):
    make_pdf(tmp_path / "long.pdf", pages=8)
    out = tmp_path / "out"
    assert convert(str(tmp_path / "long.pdf"), "--out", str(out), "--pages", "2-3,7").exit_code == 0
    assert [p for p, _ in pages_of(out / "long.pdf.json")] == [2, 3, 7]


def test_resume_skips_done_documents_and_redoes_after_a_crash_before_the_manifest(docs, tmp_path):
    out = tmp_path / "out"
    assert convert(str(docs), "--out", str(out)).exit_code == 0
    target = out / "in" / "a" / "report.pdf.md"
    stamp = target.stat().st_mtime_ns
    second = convert(str(docs), "--out", str(out), "-v")
    assert second.exit_code == 0
    assert "skipped 3 document(s)" in second.output
    assert target.stat().st_mtime_ns == stamp
    # A crash between writing the outputs and the manifest: the manifest is missing.
    (out / "in" / "a" / ".ocrprune" / "report.pdf.manifest.json").unlink()
    target.write_text("half-written")
    third = convert(str(docs), "--out", str(out))
    assert third.exit_code == 0
    assert "skipped 2 document(s)" in third.output
    assert "<--- Page Split --->" in target.read_text()
    # Changing an option that changes output redoes everything; --force does too.
    assert "document(s) already converted" not in convert(str(docs), "--out", str(out), "--keep", "0.5").output
    forced = convert(str(docs), "--out", str(out), "--keep", "0.5", "--force").output
    assert "document(s) already converted" not in forced


def test_inputs_with_dotdot_and_absolute_paths_stay_inside_out(tmp_path, monkeypatch):
    make_pdf(tmp_path / "outside" / "doc.pdf")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = work / "out"
    result = convert("../outside/doc.pdf", str(tmp_path / "outside" / "doc.pdf"), "--out", "out")
    assert result.exit_code == 0, result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".md", ".json", ".csv"}]
    assert all(out in p.parents for p in written), written


def run_stdout(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "ocrprune", "convert", *args, *FAST],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def stdout_in_process(args: list[str], capfd) -> subprocess.CompletedProcess:
    """`ocrprune convert ARGS` in this process: what reached file descriptor 1 (where `--stdout`
    writes the documents) as stdout, the command's own stderr as stderr, as `run_stdout` gives them."""
    capfd.readouterr()  # drop whatever came before
    result = CliRunner().invoke(app, ["convert", *args, *FAST])
    captured = capfd.readouterr()
    return subprocess.CompletedProcess(args, result.exit_code, captured.out + result.stdout, result.stderr + captured.err)


# The real process (what a pipe reads from fd 1, C libraries included) is the slow test below; this
# fast one checks the same contract with the command run in this process.
def test_stdout_in_process_carries_only_the_document(docs, tmp_path, capfd):
    single = stdout_in_process([str(docs / "a" / "report.pdf"), "--stdout"], capfd)
    assert single.returncode == 0, single.stderr
    assert single.stdout.count("<--- Page Split --->") == 2
    assert "ocrprune:" not in single.stdout and "tiny-random" in single.stderr
    many = stdout_in_process([str(docs), "--stdout"], capfd)
    assert many.returncode == 0, many.stderr
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert len(lines) == 5
    assert {line["page"] for line in lines} == {1, 2, 3}
    assert not list(tmp_path.glob("ocrprune-out"))


@pytest.mark.slow  # two real processes, each importing torch; the in-process test above is the fast one
def test_stdout_carries_only_the_document(docs, tmp_path):
    single = run_stdout([str(docs / "a" / "report.pdf"), "--stdout"])
    assert single.returncode == 0, single.stderr
    assert single.stdout.count("<--- Page Split --->") == 2
    assert "ocrprune:" not in single.stdout and "tiny-random" in single.stderr
    many = run_stdout([str(docs), "--stdout"])
    assert many.returncode == 0, many.stderr
    lines = [json.loads(line) for line in many.stdout.splitlines()]
    assert len(lines) == 5
    assert {line["page"] for line in lines} == {1, 2, 3}
    assert not list(tmp_path.glob("ocrprune-out"))


class FailingEngine(BackendBase):
    """The real tiny engine, made to fail at one seam: a chosen page raises, or a batch runs out of memory."""

    def __init__(self, real, fail_on_size=None, oom_over=None, interrupt_on_call=None):
        self.real = real
        self.fail_on_size = fail_on_size
        self.oom_over = oom_over
        self.interrupt_on_call = interrupt_on_call
        self.calls: list[int] = []

    def run(self, images):
        self.calls.append(len(images))
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        if self.oom_over is not None and len(images) > self.oom_over:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fail_on_size is not None and any(im.size == self.fail_on_size for im in images):
            raise ValueError("boom")
        return self.real.run(images)


def run_with(tmp_path, engine, inputs, batch=4, fail_fast=False):
    from ocrprune.runtime.api import describe_run
    from ocrprune.runtime.hf.engine import Engine
    from ocrprune.runtime.hf.loading import load_model

    config = RunConfig(
        inputs=tuple(str(p) for p in inputs),
        out=tmp_path / "out",
        model=ModelConfig(model="tiny-random", device="cpu"),
        prune=PruneConfig(keep=0.5),
        generation=GenerationSettings(mode="tiny", max_new_tokens=64),
        fail_fast=fail_fast,
    )
    loaded = load_model(config.model)
    real = Engine(loaded, config.generation, config.prune)
    wrapped = engine(real)

    def factory():
        info = describe_run(real.loaded_info(), generation=config.generation, prune=config.prune, engine=config.engine)
        return wrapped, info, batch

    return runner.run(config, engine_factory=factory), wrapped


def test_a_page_that_fails_in_the_model_is_marked_and_the_others_are_written(tmp_path):
    draw_page((300, 400), seed=1).save(tmp_path / "p1.png")
    draw_page((333, 444), seed=2).save(tmp_path / "p2.png")
    draw_page((300, 400), seed=3).save(tmp_path / "p3.png")
    outcome, engine = run_with(tmp_path, lambda real: FailingEngine(real, fail_on_size=(333, 444)), sorted(tmp_path.glob("p*.png")))
    statuses = {d.source.rsplit("/", 1)[-1]: [p.status for p in d.pages] for d in outcome.docs}
    assert statuses == {"p1.png": ["ok"], "p2.png": ["model_error"], "p3.png": ["ok"]}
    assert int(outcome.exit_code) == 3
    assert engine.calls == [3, 2, 1, 1, 1]  # the batch, its halves (p1+p2, p3), then p1 and p2 alone
    assert "boom" in json.loads((tmp_path / "out" / "p2.png.json").read_text())["pages"][0]["error"]
    assert "> **ocrprune: page 1 status=model_error" in (tmp_path / "out" / "p2.png.md").read_text()


def test_out_of_memory_batches_are_split_down_until_they_fit(tmp_path):
    make_pdf(tmp_path / "doc.pdf", pages=4)
    outcome, engine = run_with(tmp_path, lambda real: FailingEngine(real, oom_over=1), [tmp_path / "doc.pdf"])
    assert [p.status for p in outcome.docs[0].pages] == ["ok"] * 4
    assert engine.calls == [4, 2, 1, 1, 2, 1, 1]


def test_ctrl_c_keeps_finished_documents_and_exits_130(tmp_path):
    for n in range(3):
        make_pdf(tmp_path / f"d{n}.pdf", pages=2)
    outcome, _ = run_with(tmp_path, lambda real: FailingEngine(real, interrupt_on_call=2), sorted(tmp_path.glob("*.pdf")), batch=2)
    assert int(outcome.exit_code) == 130
    out = tmp_path / "out"
    assert (out / "d0.pdf.md").exists() and (out / ".ocrprune" / "d0.pdf.manifest.json").exists()
    assert not (out / "d1.pdf.md").exists() and not (out / ".ocrprune" / "d1.pdf.manifest.json").exists()


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    (tmp_path / "a.pdf").write_bytes(b"")
    make_pdf(tmp_path / "b.pdf")
    result = convert(str(tmp_path / "a.pdf"), str(tmp_path / "b.pdf"), "--out", str(tmp_path / "out"), "--fail-fast")
    assert result.exit_code == 4, result.output
    assert not (tmp_path / "out" / "b.pdf.md").exists()


def test_readme_commands_are_the_ones_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert blocks[0] == "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ocrprune convert sample_docs/ --out out/"
    assert blocks[1] == 'python3.11 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest'
    assert blocks[1] in (REPO / ".ci" / "run").read_text()


def test_help_documents_the_exit_codes():
    result = CliRunner().invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    for line in ("0    every page of every document is ok", "2    usage error", "3    finished, but some",
                 "4    no page produced any output", "5    environment", "6    the output folder is not writable",
                 "75   another ocrprune run", "130, 143, 129  interrupted"):
        assert line in result.output


def test_retry_failed_redoes_documents_with_failed_pages_only(docs, tmp_path):
    out = tmp_path / "out"
    short = ["--max-new-tokens", "2"]  # pages that cannot reach end-of-sequence end as `repetition`
    runner = CliRunner()
    base = ["convert", str(docs), "--out", str(out), *FAST[:-4], "--batch-size", "4"]
    first = runner.invoke(app, base + short)
    assert first.exit_code in (3, 4), first.output
    again = runner.invoke(app, base + short)
    assert "skipped 3 document(s)" in again.output  # failed pages alone do not force a redo
    retried = runner.invoke(app, base + short + ["--retry-failed"])
    assert "already converted" not in retried.output


def test_json_logs_are_one_object_per_line(tmp_path):
    (tmp_path / "x.pdf").write_bytes(b"")
    result = convert(str(tmp_path / "x.pdf"), "--out", str(tmp_path / "out"), "--log-format", "json", "-q")
    assert result.exit_code == 4
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert records and records[0]["level"] == "error" and records[0]["kind"] == "empty"


def test_sweep_command_compares_keeps_and_writes_its_report(tmp_path):
    draw_page((300, 400), seed=4).save(tmp_path / "page.png")
    out = tmp_path / "sweep"
    args = ["sweep", str(tmp_path / "page.png"), "--out", str(out), "--keep", "1,0.4", *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sweep.json").read_text())
    assert [row["keep"] for row in report["settings"]] == ["1", "0.4"]
    assert report["settings"][0]["fidelity"] == 1.0 and report["settings"][0]["exact_match"] == 1.0
    assert report["settings"][1]["visual_kept"] == 25  # floor(64 * 0.4)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rejects_bad_keep_lists():
    result = CliRunner().invoke(app, ["sweep", "x.pdf", "--keep", "1,2"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_kill_9_mid_run_leaves_nothing_a_rerun_trusts(tmp_path):
    import signal
    import time

    for n in range(6):
        make_pdf(tmp_path / "in" / f"d{n}.pdf", pages=2, text=f"document {n} page {{n}}")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ocrprune", "convert", str(tmp_path / "in"), "--out", str(out), *FAST[:-2], "--batch-size", "1"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifests = out / "in" / ".ocrprune"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (manifests.exists() and any(manifests.glob("*.manifest.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name.split(".")[0] for p in manifests.glob("*.manifest.json")}
    assert 1 <= len(done_before) < 6
    rerun = convert(str(tmp_path / "in"), "--out", str(out))
    assert rerun.exit_code == 0, rerun.output
    assert f"skipped {len(done_before)} document(s)" in rerun.output
    for n in range(6):
        assert pages_of(out / "in" / f"d{n}.pdf.json") == [(1, "ok"), (2, "ok")]
        assert (out / "in" / f"d{n}.pdf.md").read_text().count("<--- Page Split --->") == 1
    assert not list(out.rglob("*.tmp"))
