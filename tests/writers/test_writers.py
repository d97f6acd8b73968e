"""Markdown/JSON renderers (pure) and the file writer (atomic writes, containment, manifest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from ocrprune import postprocess
from ocrprune.errors import ExitCode, OutputError
from ocrprune.records import (
    Box,
    DocResult,
    Figure,
    KeepInfo,
    PageResult,
    RunInfo,
    Timings,
    TokenCounts,
)
from ocrprune.writers import files
from ocrprune.writers.json import page_json, render_json, render_jsonl
from ocrprune.writers.markdown import IMAGE_DIR_PLACEHOLDER, render_markdown

SEP = "\n\n<--- Page Split --->\n\n"
RUN = RunInfo(
    model="deepseek-ai/DeepSeek-OCR",
    revision="abc123",
    mode="base",
    keep="0.5",
    prune_method="rtprune",
    prompt="<image>\n<|grounding|>Convert the document to markdown.",
    device="cuda",
    dtype="bf16",
    version="0.1.0",
)


def _doc(*pages: PageResult, **kw: object) -> DocResult:
    return DocResult(
        source="in/report.pdf", stem="report", pages=pages, page_count=len(pages), **kw
    )


# --- Markdown ---------------------------------------------------------------------------------


def test_markdown_marks_every_non_ok_page_and_keeps_its_text() -> None:
    doc = _doc(
        PageResult(1, "ok", markdown="# One"),
        PageResult(2, "render_error", error="page 2: cannot render: broken xref"),
        PageResult(3, "repetition", markdown="loop loop"),
        PageResult(4, "timeout", markdown=""),
        PageResult(5, "model_error", markdown="partial", error="CUDA out of memory"),
    )

    assert render_markdown(doc, page_separator=SEP, image_dir="report_images") == (
        "# One"
        + SEP
        + "> **ocrprune: page 2 status=render_error: page 2: cannot render: broken xref**"
        + SEP
        + "> **ocrprune: page 3 status=repetition "
        + "(stopped at the token limit in a loop; output repeats itself)**"
        + "\n\nloop loop"
        + SEP
        + "> **ocrprune: page 4 status=timeout (generation hit the time limit; "
        + "output may be truncated)**"
        + SEP
        + "> **ocrprune: page 5 status=model_error: CUDA out of memory**\n\npartial\n"
    )


def test_markdown_of_a_document_that_failed_to_open_is_one_marker_line() -> None:
    doc = DocResult("in/locked.pdf", "locked", error="password required", error_kind="encrypted")

    assert render_markdown(doc, page_separator=SEP, image_dir="x") == (
        "> **ocrprune: document failed: encrypted: password required**\n"
    )


def test_markdown_keeps_empty_ok_pages_so_page_count_survives() -> None:
    doc = _doc(
        PageResult(1, "ok", markdown="A"), PageResult(2, "ok"), PageResult(3, "ok", markdown="C")
    )

    assert render_markdown(doc, page_separator="\n---\n", image_dir="x") == "A\n---\n\n---\nC\n"


def test_markdown_marker_stays_on_one_visible_line() -> None:
    doc = _doc(PageResult(1, "model_error", error="bad --> thing\nsecond line"))

    assert render_markdown(doc, page_separator=SEP, image_dir="x") == (
        "> **ocrprune: page 1 status=model_error: bad --> thing second line**\n"
    )


def test_markdown_resolves_figure_links_to_the_escaped_image_folder() -> None:
    page = PageResult(1, "ok", markdown=f"![]({IMAGE_DIR_PLACEHOLDER}/page0001_fig01.jpg)")

    text = render_markdown(_doc(page), page_separator=SEP, image_dir="my report (v2)_images")

    assert text == "![](my%20report%20%28v2%29_images/page0001_fig01.jpg)\n"


def test_markdown_placeholder_matches_postprocess() -> None:
    assert IMAGE_DIR_PLACEHOLDER == postprocess.IMAGE_DIR_PLACEHOLDER


# --- JSON -------------------------------------------------------------------------------------

PAGE = PageResult(
    page=1,
    status="ok",
    markdown=f"Tëxt ![]({IMAGE_DIR_PLACEHOLDER}/page0001_fig01.jpg)",
    raw_text="<|ref|>text<|/ref|>…",
    boxes=(Box("text", ((1, 2, 3, 4), (5, 6, 7, 8)), "Tëxt"),),
    figures=(Figure("page0001_fig01.jpg", (10, 20, 30, 40), b"jpeg"),),
    tokens=TokenCounts(256, 128, 17, 9, 8, 300, 164, 42),
    timings=Timings(1.234567, 2.0, 3.0, 0.499, 5.0, 60.0, 71.7349),
    keep=KeepInfo("0.5", 0.5, "rtprune"),
    width=1654,
    height=2339,
)


def test_json_document_has_the_versioned_schema_and_all_required_keys() -> None:
    data = json.loads(render_json(_doc(PAGE), RUN))

    assert list(data) == [
        "schema", "source", "model", "revision", "mode", "keep", "prune_method", "prompt",
        "device", "dtype", "dummy_model", "engine", "positions", "ocrprune_version", "page_count", "error",
        "error_kind", "pages",
    ]  # fmt: skip
    assert data["schema"] == "ocrprune.document/1"
    assert (data["source"], data["model"], data["revision"]) == (
        "in/report.pdf",
        RUN.model,
        "abc123",
    )
    assert (data["dummy_model"], data["ocrprune_version"], data["page_count"]) == (
        False,
        "0.1.0",
        1,
    )
    assert data["pages"] == [
        {
            "page": 1,
            "status": "ok",
            "error": None,
            "markdown": "Tëxt ![](report_images/page0001_fig01.jpg)",
            "raw_text": "<|ref|>text<|/ref|>…",
            "boxes": [{"label": "text", "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]], "text": "Tëxt"}],
            "figures": [{"file": "report_images/page0001_fig01.jpg", "box": [10, 20, 30, 40]}],
            "tokens": {
                "visual_total": 256, "visual_kept": 128, "layout_total": 17, "layout_kept": 9,
                "newlines_collapsed": 8, "prompt_unpruned": 300, "prompt": 164, "generated": 42,
            },
            "timings_ms": {
                "render": 1.23, "preprocess": 2.0, "encode": 3.0, "prune": 0.5, "prefill": 5.0,
                "decode": 60.0, "total": 71.73,
            },
            "keep": {"setting": "0.5", "ratio": 0.5, "method": "rtprune"},
            "size": {"width": 1654, "height": 2339},
        }
    ]  # fmt: skip


def test_json_is_indented_utf8_text() -> None:
    text = render_json(_doc(PAGE), RUN)

    assert text.startswith('{\n  "schema": "ocrprune.document/1",\n')
    assert "Tëxt" in text and text.endswith("}\n")


def test_json_keep_has_r_txt_and_r_sim_only_for_auto() -> None:
    auto = PageResult(1, "ok", keep=KeepInfo("auto", 0.31, "rtprune", r_txt=0.25, r_sim=0.4))

    pages = json.loads(render_json(_doc(auto, PAGE), RUN))["pages"]

    assert pages[0]["keep"] == {
        "setting": "auto", "ratio": 0.31, "method": "rtprune", "r_txt": 0.25, "r_sim": 0.4,
    }  # fmt: skip
    assert "r_txt" not in pages[1]["keep"] and "r_sim" not in pages[1]["keep"]


def test_json_flags_the_tiny_random_model() -> None:
    run = RunInfo("tiny-random", None, "tiny", "1", "rtprune", "p", "cpu", "fp32", dummy_model=True)

    data = json.loads(render_json(_doc(), run))

    assert data["dummy_model"] is True
    assert data["warning"] == "tiny-random model: text is meaningless"


def test_json_of_failed_document_carries_error_and_kind() -> None:
    doc = DocResult("in/x.pdf", "x", error="not a PDF", error_kind="not_a_document")

    data = json.loads(render_json(doc, RUN))

    assert (data["error"], data["error_kind"], data["page_count"], data["pages"]) == (
        "not a PDF", "not_a_document", 0, [],
    )  # fmt: skip


def test_jsonl_is_one_compact_line_per_page_with_run_fields() -> None:
    lines = render_jsonl(_doc(PAGE, PageResult(2, "timeout")), RUN).splitlines()

    assert len(lines) == 2 and ": " not in lines[0]
    first = json.loads(lines[0])
    assert first == page_json(PAGE, _doc(PAGE, PageResult(2, "timeout")), RUN)
    assert (first["schema"], first["source"], first["model"], first["page"]) == (
        "ocrprune.page/1", "in/report.pdf", RUN.model, 1,
    )  # fmt: skip
    assert json.loads(lines[1])["status"] == "timeout"


def test_jsonl_of_failed_document_is_one_document_error_line() -> None:
    doc = DocResult("in/x.pdf", "x", error="bad", error_kind="corrupt")

    (line,) = render_jsonl(doc, RUN).splitlines()

    record = json.loads(line)
    assert (record["page"], record["status"], record["error_kind"]) == (
        None,
        "document_error",
        "corrupt",
    )


# --- files: layout and containment -------------------------------------------------------------


def test_paths_for_mirrors_the_relative_path_under_out(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = files.OutputLayout(out).paths_for(PurePosixPath("a/b/report"))

    root = out.resolve()
    assert paths.md == root / "a/b/report.md"
    assert paths.json == root / "a/b/report.json"
    assert paths.images_dir == root / "a/b/report_images"
    assert paths.manifest == root / "a/b/.ocrprune/report.manifest.json"


@pytest.mark.parametrize("rel", ["../evil", "a/../../evil", "/etc/evil", ".", "", "a/.ocrprune/x"])
def test_paths_for_refuses_paths_outside_out(tmp_path: Path, rel: str) -> None:
    with pytest.raises(OutputError, match="refusing output path"):
        files.OutputLayout(tmp_path / "out").paths_for(PurePosixPath(rel))


def test_paths_for_refuses_a_symlinked_subfolder_pointing_outside(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)

    with pytest.raises(OutputError, match="outside"):
        files.OutputLayout(out).paths_for(PurePosixPath("sub/report"))


def test_write_document_refuses_a_symlink_that_appeared_after_paths_for(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    paths = files.OutputLayout(out).paths_for(PurePosixPath("report"))
    out.mkdir()
    paths.images_dir.symlink_to(outside, target_is_directory=True)

    with pytest.raises(OutputError, match="outside"):
        files.write_document(
            paths, "x", None, [Figure("page0001_fig01.jpg", (0, 0, 1, 1), b"j")], {}
        )
    assert list(outside.iterdir()) == []


# --- files: atomic writes ----------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "doc.md"

    files.atomic_write(target, "first")
    files.atomic_write(target, "sécond")

    assert target.read_bytes() == "sécond".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.md"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "doc.md"
    target.write_text("old")

    def fail_replace(src: object, dst: object, **dir_fds: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail_replace)
    with pytest.raises(OutputError) as err:
        files.atomic_write(target, "new")

    assert str(err.value) == f"cannot write {target}: No space left on device"
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.md"]


def test_atomic_write_under_a_regular_file_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    with pytest.raises(OutputError, match="cannot write"):
        files.atomic_write(tmp_path / "file" / "sub" / "doc.md", b"x")


# --- files: manifest and resume ----------------------------------------------------------------

OPTIONS = {"mode": "base", "keep": "0.5", "formats": ["md", "json"], "dpi": 144}
FIG = Figure("page0001_fig01.jpg", (1, 2, 3, 4), b"\xff\xd8jpeg")


def _write(tmp_path: Path, statuses: list[str] | None = None) -> files.DocPaths:
    paths = files.OutputLayout(tmp_path / "out").paths_for(PurePosixPath("a/report"))
    manifest = files.manifest_for("sha-in", OPTIONS, "model", "rev", statuses or ["ok", "ok"])
    files.write_document(paths, "# md\n", '{"j": 1}\n', [FIG], manifest)
    return paths


def _key(options: dict = OPTIONS) -> dict:
    return files.manifest_key("sha-in", options, "model", "rev")


def test_write_document_writes_outputs_and_a_manifest_listing_them(tmp_path: Path) -> None:
    paths = _write(tmp_path)

    assert paths.md.read_text() == "# md\n" and paths.json.read_text() == '{"j": 1}\n'
    assert (paths.images_dir / FIG.name).read_bytes() == FIG.jpeg
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["schema"] == "ocrprune.manifest/1"
    assert manifest["key"] == _key()
    assert manifest["formats"] == {"md": "report.md", "json": "report.json"}
    assert manifest["outputs"]["report.md"] == {
        "size": 5, "sha256": files.file_sha256(paths.md),
    }  # fmt: skip
    assert sorted(manifest["outputs"]) == [
        "report.json", "report.md", "report_images/page0001_fig01.jpg",
    ]  # fmt: skip
    assert manifest["page_statuses"] == ["ok", "ok"]


def test_is_done_when_manifest_matches_and_outputs_are_intact(tmp_path: Path) -> None:
    paths = _write(tmp_path)

    assert files.is_done(paths, _key(), ["md", "json"]) is True
    assert files.is_done(paths, files.manifest_for("sha-in", OPTIONS, "model", "rev", []), ["md"])


def test_is_done_false_after_crash_before_manifest(tmp_path: Path) -> None:
    paths = files.OutputLayout(tmp_path / "out").paths_for(PurePosixPath("report"))
    files.atomic_write(paths.md, "# md\n")
    files.atomic_write(paths.json, "{}\n")

    assert files.is_done(paths, _key(), ["md", "json"]) is False


def test_is_done_false_when_markdown_truncated_after_manifest(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    paths.md.write_text("# m")

    assert files.is_done(paths, _key(), ["md"]) is False


def test_is_done_false_when_output_edited_to_same_size(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    paths.md.write_text("# MD\n")

    assert files.is_done(paths, _key(), ["md"]) is False


def test_is_done_false_when_a_figure_is_missing(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    (paths.images_dir / FIG.name).unlink()

    assert files.is_done(paths, _key(), ["md"]) is False


def test_is_done_false_when_options_model_or_input_changed(tmp_path: Path) -> None:
    paths = _write(tmp_path)

    assert files.is_done(paths, _key(OPTIONS | {"keep": "0.3"}), ["md"]) is False
    assert (
        files.is_done(paths, files.manifest_key("sha-in", OPTIONS, "other", "rev"), ["md"]) is False
    )
    assert (
        files.is_done(paths, files.manifest_key("sha-new", OPTIONS, "model", "rev"), ["md"])
        is False
    )


def test_is_done_false_when_a_requested_format_was_not_written(tmp_path: Path) -> None:
    paths = files.OutputLayout(tmp_path / "out").paths_for(PurePosixPath("report"))
    files.write_document(
        paths, "# md\n", None, [], files.manifest_for("sha-in", OPTIONS, "model", "rev", ["ok"])
    )

    assert files.is_done(paths, _key(), ["md"]) is True
    assert files.is_done(paths, _key(), ["md", "json"]) is False


def test_is_done_false_for_corrupt_manifest(tmp_path: Path) -> None:
    paths = _write(tmp_path)
    paths.manifest.write_text('{"schema": "ocrprune.manifest/1", "key": ')

    assert files.is_done(paths, _key(), ["md"]) is False


def test_options_hash_ignores_key_order() -> None:
    assert files.options_hash({"a": 1, "b": [2]}) == files.options_hash({"b": [2], "a": 1})
    assert files.options_hash({"a": 1}) != files.options_hash({"a": 2})


# --- files: writability and run report -------------------------------------------------------


def test_check_writable_creates_the_folder(tmp_path: Path) -> None:
    files.check_writable(tmp_path / "new" / "out")

    assert list((tmp_path / "new" / "out").iterdir()) == []


def test_check_writable_under_a_regular_file_is_exit_6(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"

    with pytest.raises(OutputError) as err:
        files.check_writable(out)

    assert err.value.exit_code == ExitCode.OUTPUT_NOT_WRITABLE
    assert str(err.value) == (
        f"output folder {out} is not writable: Not a directory (choose another with --out)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_check_writable_read_only_folder_is_output_error(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            files.check_writable(out)
    finally:
        out.chmod(0o700)


def test_write_run_report_writes_both_files(tmp_path: Path) -> None:
    report, csv_path = files.write_run_report(tmp_path, '{"a": 1}\n', "h\n")

    assert (report.name, report.read_text()) == ("report.json", '{"a": 1}\n')
    assert (csv_path.name, csv_path.read_text()) == ("pages.csv", "h\n")


# --- layering ---------------------------------------------------------------------------------


def test_output_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import ocrprune.writers.markdown, ocrprune.writers.json, ocrprune.writers.files\n"
        "import ocrprune.report, ocrprune.postprocess.grounding\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout == "[]\n"


def test_atomic_write_clears_temps_left_by_a_killed_writer(tmp_path: Path) -> None:
    from ocrprune.writers.files import atomic_write

    stale = tmp_path / ".doc.md.999999999.dead.tmp"  # no such process
    stale.write_text("half")
    live = tmp_path / f".doc.md.{os.getpid()}.live.tmp"  # a writer that is still running
    live.write_text("in progress")
    atomic_write(tmp_path / "doc.md", "done")
    assert (tmp_path / "doc.md").read_text() == "done"
    assert not stale.exists() and live.exists()
