"""inputs: expanding arguments into documents, sniffing types, naming outputs safely."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

import pytest

from docgen import make_pdf, make_png, png_bytes
from ocrprune.inputs import Document, expand_inputs, sanitize_component, sniff_kind


def rels(docs: list[Document]) -> list[str]:
    return [str(d.rel) for d in docs]


def kinds(errors: list) -> list[tuple[str, str]]:
    return [(e.path, e.kind) for e in errors]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """docs/{a.pdf, B.PDF, notes.md, sub/c.png, sub/deep/d.pdf, .hidden/e.pdf, data.json}"""
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf")
    make_pdf(docs / "B.PDF")
    (docs / "notes.md").write_text("# not a document\n")
    (docs / "data.json").write_text("{}")
    (docs / "sub").mkdir()
    make_png(docs / "sub" / "c.png")
    make_pdf(docs / "sub" / "deep" / "d.pdf")
    make_pdf(docs / ".hidden" / "e.pdf")
    return tmp_path


def test_folder_is_recursive_sorted_and_skips_non_documents_silently(tree: Path) -> None:
    docs, errors = expand_inputs(["docs"])
    assert errors == []
    assert [d.display for d in docs] == [
        "docs/B.PDF",
        "docs/a.pdf",
        "docs/sub/c.png",
        "docs/sub/deep/d.pdf",
    ]
    assert rels(docs) == ["docs/B", "docs/a", "docs/sub/c", "docs/sub/deep/d"]
    assert [d.kind for d in docs] == ["pdf", "pdf", "image", "pdf"]
    assert all(d.path.is_absolute() for d in docs)


def test_folder_glob_filter_matches_names_case_insensitively(tree: Path) -> None:
    docs, errors = expand_inputs(["docs"], glob="*.pdf")
    assert [d.display for d in docs] == ["docs/B.PDF", "docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert errors == []


def test_folder_without_documents_is_an_empty_error(tree: Path) -> None:
    (tree / "nothing").mkdir()
    (tree / "nothing" / "readme.txt").write_text("hi")
    docs, errors = expand_inputs(["nothing", "docs"], glob="*.png")
    assert rels(docs) == ["docs/sub/c"]
    assert kinds(errors) == [("nothing", "empty")]


def test_quoted_recursive_glob_expands_and_names_relative_to_common_parent(tree: Path) -> None:
    docs, errors = expand_inputs(["docs/**/*.pdf"])
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert rels(docs) == ["a", "sub/deep/d"]


def test_glob_matching_nothing_is_reported(tree: Path) -> None:
    docs, errors = expand_inputs(["docs/*.tiff"])
    assert docs == []
    assert kinds(errors) == [("docs/*.tiff", "missing")]


def test_list_file_paths_are_relative_to_the_list_and_skip_comments(tree: Path) -> None:
    (tree / "docs" / "list.txt").write_text("# my docs\n\na.pdf\n  sub/c.png  \n\n# end\n")
    docs, errors = expand_inputs(["@docs/list.txt"])
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/c.png"]
    assert [d.path for d in docs] == [tree / "docs/a.pdf", tree / "docs/sub/c.png"]


def test_missing_list_file_is_reported(tree: Path) -> None:
    docs, errors = expand_inputs(["@nope.txt", "docs/a.pdf"])
    assert rels(docs) == ["a"]
    assert kinds(errors) == [("@nope.txt", "missing")]


def test_dash_reads_paths_from_the_stream(tree: Path) -> None:
    stream = io.StringIO("docs/a.pdf\ndocs/sub/deep/d.pdf\n\n")
    docs, errors = expand_inputs(["-"], stdin=stream)
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert rels(docs) == ["a", "sub/deep/d"]


def test_type_is_sniffed_from_content_not_extension(tmp_path: Path) -> None:
    (tmp_path / "png_named.jpg").write_bytes(png_bytes())
    (tmp_path / "text.pdf").write_text("Edgar, King of England\n" * 20)
    (tmp_path / "empty.pdf").write_bytes(b"")
    junk = tmp_path / "junk_prefix.bin"
    junk.write_bytes(b"x" * 500 + make_pdf(tmp_path / "real.pdf").read_bytes())
    (tmp_path / "bmw.txt").write_text("BMW annual report, not a bitmap")
    assert sniff_kind(tmp_path / "png_named.jpg") == "image"
    assert sniff_kind(tmp_path / "text.pdf") is None
    assert sniff_kind(tmp_path / "empty.pdf") is None
    assert sniff_kind(junk) == "pdf"
    assert sniff_kind(tmp_path / "bmw.txt") is None


def test_bad_explicit_inputs_become_errors_and_the_batch_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "png_named.jpg").write_bytes(png_bytes())
    (tmp_path / "text.pdf").write_text("plain text\n")
    (tmp_path / "x.pdf").write_bytes(b"")
    make_pdf(tmp_path / "good.pdf")
    args = ["missing.pdf", "text.pdf", "x.pdf", "png_named.jpg", "good.pdf"]
    docs, errors = expand_inputs(args)
    assert [(d.display, d.kind) for d in docs] == [("png_named.jpg", "image"), ("good.pdf", "pdf")]
    assert kinds(errors) == [
        ("missing.pdf", "missing"),
        ("text.pdf", "not_a_document"),
        ("x.pdf", "empty"),
    ]
    assert str(errors[0]) == "missing.pdf: missing: no such file or folder"


def test_duplicates_via_repeat_and_symlink_appear_once_in_first_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "d" / "a.pdf")
    make_pdf(tmp_path / "d" / "b.pdf")
    os.symlink(tmp_path / "d" / "a.pdf", tmp_path / "link.pdf")
    docs, errors = expand_inputs(["d/b.pdf", "link.pdf", "d/a.pdf", "d", "d/b.pdf"])
    assert errors == []
    assert [d.display for d in docs] == ["d/b.pdf", "link.pdf"]
    assert docs[1].path == tmp_path / "link.pdf"  # absolutised, not resolved


def test_same_name_in_two_folders_gets_different_rel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "a" / "report.pdf")
    make_pdf(tmp_path / "b" / "report.pdf")
    files, _ = expand_inputs(["a/report.pdf", "b/report.pdf"])
    folders, _ = expand_inputs(["a", "b"])
    assert rels(files) == ["a/report", "b/report"]
    assert rels(folders) == ["a/report", "b/report"]


def test_single_file_rel_is_its_stem_even_with_dots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_png(tmp_path / "scans" / "a.b.c.jpg")
    docs, _ = expand_inputs(["scans/a.b.c.jpg"])
    assert docs[0].rel == PurePosixPath("a.b.c")


def test_parent_and_absolute_inputs_never_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    make_pdf(tmp_path / "x" / "y.pdf")
    make_pdf(work / "z.pdf")
    make_pdf(tmp_path / "other" / "deep" / "w.pdf")
    args = ["../x/y.pdf", "z.pdf", str(tmp_path / "other" / "deep" / "w.pdf"), "../other"]
    docs, errors = expand_inputs(args)
    assert rels(docs) == ["x/y", "work/z", "other/deep/w"]
    one, _ = expand_inputs([str(tmp_path / "x" / "y.pdf")])
    assert rels(one) == ["y"]
    root, _ = expand_inputs(["../../" * 20 + str(tmp_path)[1:] + "/x/y.pdf", "z.pdf"])
    for doc in docs + one + root:
        assert ".." not in doc.rel.parts and not doc.rel.is_absolute()
    assert [e.kind for e in errors] == []  # ../other only held w.pdf, already given


def test_colliding_rels_get_extension_then_number_suffixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "d" / "x.pdf")
    make_png(tmp_path / "d" / "x.png")
    docs, _ = expand_inputs(["d/x.pdf", "d/x.png"])
    assert rels(docs) == ["x", "x_png"]
    make_pdf(tmp_path / "d" / "X.PDF")
    make_pdf(tmp_path / "d" / "x_png.pdf")
    docs, _ = expand_inputs(["d"])
    # sorted: X.PDF, x.pdf, x.png, x_png.pdf. x.pdf shares X's extension -> a number; x.png's
    # `x_png` belongs to x_png.pdf -> the next free number.
    assert rels(docs) == ["d/X", "d/x_2", "d/x_3", "d/x_png"]


def test_weird_names_survive_sanitized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = "re\u0301sume\u0301 copy (1).pdf"  # decomposed accents (NFD)
    make_pdf(tmp_path / "in" / name)
    make_pdf(tmp_path / "in" / "tab\there;rm -rf*.pdf")
    make_pdf(tmp_path / "in" / ".hidden.pdf")
    docs, errors = expand_inputs(["in/" + name, "in/tab\there;rm -rf*.pdf", "in/.hidden.pdf"])
    assert errors == []
    assert rels(docs) == ["résumé copy (1)", "tab_here_rm -rf_", "_hidden"]
    assert str(docs[0].rel) == "r\u00e9sum\u00e9 copy (1)"  # NFC


def test_sanitize_component_limits_and_edge_cases() -> None:
    assert sanitize_component("..") == "_"
    assert sanitize_component("a/b\\c\x00d") == "a_b_c_d"
    assert sanitize_component("CON") == "_CON"
    assert sanitize_component("漢字 ملف") == "漢字 ملف"
    long = sanitize_component("é" * 200)
    assert len(long.encode("utf-8")) <= 120 and set(long) == {"é"}


def test_display_keeps_what_the_user_typed(tree: Path) -> None:
    docs, _ = expand_inputs(["./docs/sub/", "docs//a.pdf"])
    assert [d.display for d in docs] == ["./docs/sub/c.png", "./docs/sub/deep/d.pdf", "docs//a.pdf"]
    assert rels(docs) == ["sub/c", "sub/deep/d", "a"]


def test_special_files_are_not_documents_and_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)
    docs, errors = expand_inputs([str(fifo), str(tmp_path)])
    assert docs == []
    assert kinds(errors) == [(str(fifo), "not_a_document"), (str(tmp_path), "empty")]


def test_folder_reports_files_named_like_documents_that_are_not(tmp_path: Path) -> None:
    make_pdf(tmp_path / "good.pdf")
    (tmp_path / "x.pdf").write_bytes(b"")
    (tmp_path / "lies.pdf").write_text("plain text\n")
    (tmp_path / "notes.md").write_text("# not a document, and not named like one\n")
    docs, errors = expand_inputs([str(tmp_path)])
    assert [d.rel.name for d in docs] == ["good"]
    assert sorted((Path(e.path).name, e.kind) for e in errors) == [("lies.pdf", "not_a_document"), ("x.pdf", "empty")]
