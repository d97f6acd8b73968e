"""What a re-run may delete, redo and report (issue #15: items 1, 5, 8, 10, 11, 13).

Driven through `runner.run` with the scripted engine of `test_contract` (exact token counts and
statuses) and through the real `ocrprune` entry point with the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_contract import FAST, INFO, ScriptedEngine, pdf_with_sizes, statuses
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune.cli import app
from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RasterConfig, RunConfig
from ocrprune.writers import files

CUT = ("length", "cut", [3] * 24)  # a page stopped at a cap of 24 tokens


def run_at(tmp_path, inputs, engine, *, cap=64, batch=2, factory=None, **options):
    """`runner.run` with the scripted engine at token cap `cap`."""
    config = RunConfig(
        inputs=tuple(str(p) for p in inputs),
        out=tmp_path / "out",
        model=ModelConfig(model="tiny-random", device="cpu"),
        prune=PruneConfig(keep=1.0),
        generation=GenerationSettings(mode="tiny", max_new_tokens=cap),
        base=tmp_path,
        **options,
    )
    return runner.run(config, engine_factory=factory or (lambda: (engine, INFO, batch)))


def manifest(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / "out" / ".ocrprune" / f"{name}.manifest.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under `folder` (links not followed), by relative path."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# ---- 1. a --pages run never deletes ---------------------------------------------------------------


def test_a_pages_run_that_selects_nothing_keeps_the_earlier_outputs(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "edgar.pdf", 1)
    out = tmp_path / "out"
    args = ["convert", str(pdf), "--out", str(out), "--base", str(tmp_path), *FAST, "--max-new-tokens", "8"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code in (0, 3), first.output
    before = snapshot(out)
    assert {"edgar.pdf.md", "edgar.pdf.json", ".ocrprune/edgar.pdf.manifest.json"} <= set(before)

    again = CliRunner().invoke(app, [*args, "--pages", "50"])

    assert again.exit_code == 4, again.output
    assert "edgar.pdf: no_pages_selected: --pages selects none of the document's 1 page(s)" in again.output
    assert "removed the outputs" not in again.output
    after = snapshot(out)
    for name in ("edgar.pdf.md", "edgar.pdf.json", ".ocrprune/edgar.pdf.manifest.json"):
        assert after[name] == before[name]


def test_a_pages_run_over_a_folder_deletes_nothing(tmp_path):
    docs = [pdf_with_sizes(tmp_path / "in" / f"d{n}.pdf", 2) for n in range(3)]
    assert int(run_at(tmp_path, [tmp_path / "in"], ScriptedEngine()).exit_code) == 0
    kept = {n: (tmp_path / "out" / "in" / f"d{n}.pdf.md").read_bytes() for n in range(3)}

    outcome = run_at(tmp_path, [tmp_path / "in"], ScriptedEngine(), raster=RasterConfig(pages=((40, 45),)))

    assert int(outcome.exit_code) == 4
    assert [d.error_kind for d in outcome.docs] == ["no_pages_selected"] * 3
    assert {n: (tmp_path / "out" / "in" / f"d{n}.pdf.md").read_bytes() for n in range(3)} == kept
    assert len(docs) == 3


def test_an_unchanged_input_that_now_fails_to_open_keeps_its_outputs(tmp_path):
    import pymupdf

    pdf = tmp_path / "locked.pdf"
    doc = pymupdf.open()
    doc.new_page(width=100, height=101).insert_text((10, 30), "page 1", fontsize=8)
    doc.save(str(pdf), encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="o", user_pw="secret")
    doc.close()
    first = run_at(tmp_path, [pdf], ScriptedEngine(), raster=RasterConfig(password="secret"))
    assert statuses(first) == {"locked.pdf": ["ok"]}
    before = snapshot(tmp_path / "out")

    # A re-run with other settings (so not skipped) that forgot the password: the same bytes.
    forgot = run_at(tmp_path, [pdf], ScriptedEngine(), page_separator="\n---\n")

    assert [d.error_kind for d in forgot.docs] == ["encrypted"] and int(forgot.exit_code) == 4
    after = snapshot(tmp_path / "out")
    assert {k: v for k, v in after.items() if "runs/" not in k and not k.startswith(("report", "pages"))} == {
        k: v for k, v in before.items() if "runs/" not in k and not k.startswith(("report", "pages"))}


# ---- 5. a planted link costs one document ---------------------------------------------------------


def test_a_symlinked_document_folder_costs_that_document_only(tmp_path):
    for name in ("a", "b"):
        pdf_with_sizes(tmp_path / name / "doc.pdf", 1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(outside, target_is_directory=True)

    outcome = run_at(tmp_path, [tmp_path / "a" / "doc.pdf", tmp_path / "b" / "doc.pdf"], ScriptedEngine())

    assert int(outcome.exit_code) == 3
    by_name = {Path(d.source).parent.name: d for d in outcome.docs}
    assert by_name["a"].error_kind == "unsafe_output" and by_name["b"].ok
    assert list(outside.iterdir()) == []
    assert (tmp_path / "out" / "b" / "doc.pdf.md").read_text().startswith("text of page 1")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["failures_by_kind"] == {"unsafe_output": 1}


def test_a_symlinked_checkpoint_folder_costs_that_document_only(tmp_path):
    pdfs = [pdf_with_sizes(tmp_path / f"d{n}.pdf", 2) for n in (1, 2)]
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out" / ".ocrprune").mkdir(parents=True)
    (tmp_path / "out" / ".ocrprune" / "d1.pdf.pages").symlink_to(outside, target_is_directory=True)

    outcome = run_at(tmp_path, pdfs, ScriptedEngine())

    assert int(outcome.exit_code) == 3
    assert [(Path(d.source).name, d.error_kind) for d in outcome.docs] == [("d1.pdf", "unsafe_output"), ("d2.pdf", None)]
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "out" / "d1.pdf.md").exists() and (tmp_path / "out" / "d2.pdf.md").exists()


# ---- 8. retrying capped pages under a higher cap ----------------------------------------------------


def test_retry_failed_with_a_higher_cap_redoes_only_the_capped_pages(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 3)
    other = pdf_with_sizes(tmp_path / "fine.pdf", 1)
    first = run_at(tmp_path, [pdf, other], ScriptedEngine({2: CUT}), cap=24)
    assert statuses(first) == {"doc.pdf": ["ok", "length", "ok"], "fine.pdf": ["ok"]}

    engine = ScriptedEngine()
    again = run_at(tmp_path, [pdf, other], engine, cap=64, retry_failed=True)

    assert engine.seen == [2]  # not pages 1 and 3, not fine.pdf
    assert statuses(again) == {"doc.pdf": ["ok", "ok", "ok"], "fine.pdf": ["ok"]}
    assert int(again.exit_code) == 0
    recorded = manifest(tmp_path, "doc.pdf")["pages"]
    assert [(p["page"], p["status"], p["max_new_tokens"]) for p in recorded] == [(1, "ok", 24), (2, "ok", 64), (3, "ok", 24)]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pages"]["processed"] == 1 and report["pages"]["total"] == 4
    assert report["documents"]["skipped"] == 1


def test_a_higher_cap_without_retry_failed_also_keeps_the_ok_pages(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 3)
    run_at(tmp_path, [pdf], ScriptedEngine({3: CUT}), cap=24)
    engine = ScriptedEngine()
    again = run_at(tmp_path, [pdf], engine, cap=64)
    assert engine.seen == [3]
    assert statuses(again) == {"doc.pdf": ["ok", "ok", "ok"]}


def test_a_document_whose_pages_all_ended_below_the_new_cap_is_skipped(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    run_at(tmp_path, [pdf], ScriptedEngine(), cap=24)  # 3 tokens per page, end-of-sequence
    engine = ScriptedEngine()
    again = run_at(tmp_path, [pdf], engine, cap=64)
    assert engine.seen == [] and [d.skipped for d in again.docs] == [True]


def test_a_lower_cap_than_a_page_needed_redoes_the_document(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    run_at(tmp_path, [pdf], ScriptedEngine(), cap=64)  # each page: 3 tokens
    engine = ScriptedEngine()
    run_at(tmp_path, [pdf], engine, cap=3)  # a page that took 3 tokens may differ under a cap of 3
    assert engine.seen == [1, 2]


def test_other_settings_still_redo_the_whole_document(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    run_at(tmp_path, [pdf], ScriptedEngine({2: CUT}), cap=24)
    engine = ScriptedEngine()
    run_at(tmp_path, [pdf], engine, cap=64, retry_failed=True, page_separator="\n---\n")
    assert engine.seen == [1, 2]


def test_a_manifest_written_before_caps_were_recorded_still_counts_as_done(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    run_at(tmp_path, [pdf], ScriptedEngine(), cap=64)
    path = tmp_path / "out" / ".ocrprune" / "doc.pdf.manifest.json"
    old = json.loads(path.read_text())
    # As 0.1.0 wrote it: the cap inside the key's options, no cap per page.
    options = dict(old["options"]) | {"max_new_tokens": 64}
    old["key"]["options_sha256"] = files.options_hash(options)
    old["options"] = options
    for page in old["pages"]:
        page.pop("max_new_tokens")
    path.write_text(json.dumps(old))
    engine = ScriptedEngine()
    again = run_at(tmp_path, [pdf], engine, cap=64)
    assert engine.seen == [] and [d.skipped for d in again.docs] == [True]


# ---- 10. reports count what the run did -------------------------------------------------------------


def test_a_rerun_that_only_skips_still_reports_the_recorded_token_savings(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 2)
    run_at(tmp_path, [pdf], ScriptedEngine())
    run_at(tmp_path, [pdf], ScriptedEngine())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["pages"]["processed"] == 0 and report["pages_per_s"] == 0.0
    assert report["tokens"]["visual_total"] == 128 and report["tokens"]["visual_kept"] == 64
    assert report["tokens"]["visual_kept_ratio"] == 0.5


def test_fail_fast_reports_the_inputs_it_never_reached(tmp_path):
    bad = tmp_path / "a-bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    good = [pdf_with_sizes(tmp_path / f"b{n}.pdf", 1) for n in (1, 2)]
    outcome = run_at(tmp_path, [bad, *good], ScriptedEngine(), fail_fast=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"]["not_reached"] == 2
    assert [Path(n).name for n in report["not_reached"]] == ["b1.pdf", "b2.pdf"]
    assert int(outcome.exit_code) == 4


def test_an_interrupted_run_lists_the_inputs_it_did_not_finish(tmp_path):
    import signal

    pdfs = [pdf_with_sizes(tmp_path / f"d{n}.pdf", 2) for n in (1, 2, 3)]
    outcome = run_at(tmp_path, pdfs, ScriptedEngine(interrupt_after=2, signum=signal.SIGTERM), batch=1)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert int(outcome.exit_code) == 143 and report["interrupted"] is True
    assert [Path(n).name for n in report["not_reached"]] == ["d2.pdf", "d3.pdf"]
    assert report["documents"]["not_reached"] == 2


def test_a_complete_run_reaches_everything(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    run_at(tmp_path, [pdf], ScriptedEngine())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["not_reached"] == [] and report["documents"]["not_reached"] == 0


# ---- 11. nothing heavy for inputs that fail to open ---------------------------------------------------


def test_a_run_whose_pending_inputs_all_fail_to_open_never_loads_the_model(tmp_path):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)

    def factory():
        raise AssertionError("the model was loaded")

    outcome = run_at(tmp_path, [bad], ScriptedEngine(), factory=factory)
    assert int(outcome.exit_code) == 4
    assert [d.error_kind for d in outcome.docs] == ["corrupt"]


# ---- 13. --stdout with one input: one form, whatever the failure --------------------------------------


@pytest.mark.parametrize("make", ["missing", "corrupt"])
def test_stdout_with_one_failing_input_prints_the_same_form(tmp_path, make):
    path = tmp_path / "one.pdf"
    if make == "corrupt":
        path.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 50)
    emitted: list[str] = []
    config = RunConfig(inputs=(str(path),), out=tmp_path / "unused", base=tmp_path,
                       model=ModelConfig(model="tiny-random", device="cpu"), stdout=True)
    outcome = runner.run(config, emit=emitted.append, engine_factory=lambda: (ScriptedEngine(), INFO, 2))
    assert int(outcome.exit_code) == 4
    assert len(emitted) == 1
    kind = {"missing": "missing", "corrupt": "corrupt"}[make]
    assert emitted[0].startswith(f"> **ocrprune: document failed: {kind}: ")
    assert emitted[0].endswith("**\n") and emitted[0].count("\n") == 1
    assert not (tmp_path / "unused").exists()


# ---- 12. one line for a run of identical page failures -----------------------------------------------


def test_a_pdf_lying_about_its_page_count_costs_one_log_line_not_one_per_page(tmp_path, caplog):
    from test_render_limits import make_lying_pdf

    pdf = make_lying_pdf(tmp_path / "lies.pdf", claimed=5_000)
    with caplog.at_level("ERROR", logger="ocrprune"):
        outcome = run_at(tmp_path, [pdf], ScriptedEngine())
    assert int(outcome.exit_code) == 3
    lines = [r.getMessage() for r in caplog.records if "lies.pdf" in r.getMessage()]
    detail = "pages 4-5000 are not in the PDF's page tree (it claims 5000 pages and holds 3)"
    assert lines == [f"{pdf}: render_error: {detail}", f"{pdf} pages 4-5000: render_error: {detail}"]


def test_a_run_stopped_before_out_exists_does_not_point_to_a_report(tmp_path, monkeypatch):
    from ocrprune.errors import Interrupted

    def stopped(*args, **kwargs):
        raise Interrupted(15)  # SIGTERM while the inputs are being listed

    import ocrprune.run.local as local

    monkeypatch.setattr(local, "expand_inputs", stopped)
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    result = CliRunner().invoke(app, ["convert", str(pdf), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 143, result.output
    assert "interrupted (SIGTERM)" in result.output
    assert "outputs in" not in result.output and not (tmp_path / "out").exists()


def test_a_finished_run_points_to_its_report(tmp_path):
    pdf = pdf_with_sizes(tmp_path / "doc.pdf", 1)
    result = CliRunner().invoke(app, ["convert", str(pdf), "--out", str(tmp_path / "out"), *FAST, "--max-new-tokens", "4"])
    assert result.exit_code in (0, 3), result.output
    assert f"outputs in {tmp_path / 'out'}/ (report.json, pages.csv)" in result.output
    assert (tmp_path / "out" / "report.json").is_file()
