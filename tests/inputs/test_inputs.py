"""inputs: expanding arguments into documents, sniffing types, naming outputs safely."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from docgen import make_pdf, make_png, png_bytes

from ocrprune.inputs import (
    OUTPUT_MARKER,
    Document,
    NotRegularFileError,
    expand_inputs,
    sanitize_component,
    sniff_kind,
)


def rels(docs: list[Document]) -> list[str]:
    return [str(d.rel) for d in docs]


def kinds(errors: list) -> list[tuple[str, str]]:
    return [(e.path, e.kind) for e in errors]


def h8(name: str) -> str:
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:8]


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging forever) if the block blocks, e.g. on opening a FIFO."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


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
    assert rels(docs) == ["docs/B.PDF", "docs/a.pdf", "docs/sub/c.png", "docs/sub/deep/d.pdf"]
    assert [d.kind for d in docs] == ["pdf", "pdf", "image", "pdf"]
    assert all(d.path.is_absolute() for d in docs)


def test_folder_glob_filter_matches_names_case_insensitively(tree: Path) -> None:
    docs, errors = expand_inputs(["docs"], glob="*.pdf")
    assert [d.display for d in docs] == ["docs/B.PDF", "docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert errors == []


def test_folder_without_documents_is_nothing_to_do_not_an_error(tree: Path) -> None:
    # Changed (#8.2): an existing folder with no documents used to be an `empty` error.
    (tree / "nothing").mkdir()
    (tree / "nothing" / "readme.txt").write_text("hi")
    docs, errors = expand_inputs(["nothing", "docs"], glob="*.png")
    assert rels(docs) == ["docs/sub/c.png"]
    assert errors == []


def test_quoted_recursive_glob_expands_and_names_relative_to_base(tree: Path) -> None:
    docs, errors = expand_inputs(["docs/**/*.pdf"])
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert rels(docs) == ["docs/a.pdf", "docs/sub/deep/d.pdf"]


def test_glob_matching_nothing_in_an_existing_folder_is_nothing_to_do(tree: Path) -> None:
    # Changed (#8.2): a glob over an existing folder that matches nothing used to be `missing`.
    assert expand_inputs(["docs/*.tiff"]) == ([], [])


def test_glob_whose_folder_does_not_exist_is_missing(tree: Path) -> None:
    docs, errors = expand_inputs(["dcos/*.pdf"])
    assert docs == []
    assert [str(e) for e in errors] == ["dcos/*.pdf: missing: no such folder: dcos"]


def test_list_file_paths_are_relative_to_the_list_and_skip_comments(tree: Path) -> None:
    (tree / "docs" / "list.txt").write_text("# my docs\n\na.pdf\n  sub/c.png  \n\n# end\n")
    docs, errors = expand_inputs(["@docs/list.txt"])
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/c.png"]
    assert [d.path for d in docs] == [tree / "docs/a.pdf", tree / "docs/sub/c.png"]


def test_list_files_with_a_bom_and_crlf_line_ends_read_as_intended(tree: Path) -> None:
    """Notepad and PowerShell write lists like this (#15 item 13)."""
    (tree / "docs" / "list.txt").write_bytes(b"\xef\xbb\xbfa.pdf\r\n# note\r\n\r\nsub/c.png\r\n")
    (tree / "docs" / "bom-comment.txt").write_bytes(b"\xef\xbb\xbf# first line a comment\r\nB.PDF\r\n")
    docs, errors = expand_inputs(["@docs/list.txt", "@docs/bom-comment.txt"])
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/c.png", "docs/B.PDF"]


@pytest.mark.parametrize("stream", [io.BytesIO, lambda data: io.StringIO(data.decode("utf-8"))])
def test_stdin_lists_with_a_bom_and_crlf_line_ends_read_as_intended(tree: Path, stream) -> None:
    docs, errors = expand_inputs(["-"], stdin=stream(b"\xef\xbb\xbfdocs/a.pdf\r\ndocs/sub/c.png\r\n"))
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/c.png"]


def test_a_bom_inside_a_nul_list_or_mid_line_list_is_kept(tree: Path) -> None:
    """Only a leading mark in a line list is dropped: NUL lists are taken as they are."""
    _, errors = expand_inputs(["-"], stdin=io.BytesIO(b"\xef\xbb\xbfdocs/a.pdf\x00"), null=True)
    assert kinds(errors) == [("\ufeffdocs/a.pdf", "missing")]
    _, errors = expand_inputs(["-"], stdin=io.BytesIO(b"docs/a.pdf\n\xef\xbb\xbfdocs/B.PDF\n"))
    assert kinds(errors) == [("\ufeffdocs/B.PDF", "missing")]


def test_missing_list_file_is_reported(tree: Path) -> None:
    docs, errors = expand_inputs(["@nope.txt", "docs/a.pdf"])
    assert rels(docs) == ["docs/a.pdf"]
    assert kinds(errors) == [("@nope.txt", "missing")]


def test_dash_reads_paths_from_the_stream(tree: Path) -> None:
    stream = io.StringIO("docs/a.pdf\ndocs/sub/deep/d.pdf\n\n")
    docs, errors = expand_inputs(["-"], stdin=stream)
    assert errors == []
    assert [d.display for d in docs] == ["docs/a.pdf", "docs/sub/deep/d.pdf"]
    assert rels(docs) == ["docs/a.pdf", "docs/sub/deep/d.pdf"]


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
    assert rels(files) == ["a/report.pdf", "b/report.pdf"]
    assert rels(folders) == ["a/report.pdf", "b/report.pdf"]


def test_single_file_rel_keeps_its_folders_and_full_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed (#8.5): a lone file used to be named by its stem alone (`a.b.c`).
    monkeypatch.chdir(tmp_path)
    make_png(tmp_path / "scans" / "a.b.c.jpg")
    docs, _ = expand_inputs(["scans/a.b.c.jpg"])
    assert docs[0].rel == PurePosixPath("scans/a.b.c.jpg")


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
    # Changed (#8.5): outside the base (the current folder) maps to `_outside/<absolute path>`.
    outside = PurePosixPath("_outside", *tmp_path.parts[1:])
    assert [d.rel for d in docs] == [outside / "x/y.pdf", PurePosixPath("z.pdf"), outside / "other/deep/w.pdf"]
    one, _ = expand_inputs([str(tmp_path / "x" / "y.pdf")])
    assert [d.rel for d in one] == [outside / "x/y.pdf"]
    root, _ = expand_inputs(["../../" * 20 + str(tmp_path)[1:] + "/x/y.pdf", "z.pdf"])
    assert [d.rel for d in root] == [outside / "x/y.pdf", PurePosixPath("z.pdf")]
    for doc in docs + one + root:
        assert ".." not in doc.rel.parts and not doc.rel.is_absolute()
    assert [e.kind for e in errors] == []  # ../other only held w.pdf, already given


def test_same_stem_different_extension_no_longer_collide_and_case_twins_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Changed (#8.5, #9.5): names keep their extension, so `x.pdf` and `x.png` are distinct;
    # only case twins collide, and the later one gets `~` + 8 hex of its absolute path's SHA-256.
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "d" / "x.pdf")
    make_png(tmp_path / "d" / "x.png")
    docs, _ = expand_inputs(["d/x.pdf", "d/x.png"])
    assert rels(docs) == ["d/x.pdf", "d/x.png"]
    make_pdf(tmp_path / "d" / "X.PDF")
    docs, _ = expand_inputs(["d"])
    tag = hashlib.sha256(os.fsencode(str(tmp_path / "d" / "x.pdf"))).hexdigest()[:8]
    assert rels(docs) == ["d/X.PDF", f"d/x.pdf~{tag}", "d/x.png"]


def test_weird_names_survive_sanitized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    name = "re\u0301sume\u0301 copy (1).pdf"  # decomposed accents (NFD)
    make_pdf(tmp_path / "in" / name)
    make_pdf(tmp_path / "in" / "tab\there;rm -rf*.pdf")
    make_pdf(tmp_path / "in" / ".hidden.pdf")
    docs, errors = expand_inputs(["in/" + name, "in/tab\there;rm -rf*.pdf", "in/.hidden.pdf"])
    assert errors == []
    # Changed (#8.5): unsafe names are sanitized and tagged with a hash of the original name, so
    # two names that sanitize alike stay distinct (NFD is not kept as is: NFC is a different name).
    assert rels(docs) == [
        "in/r\u00e9sum\u00e9 copy (1).pdf~" + h8(name),
        "in/tab_here_rm -rf_.pdf~" + h8("tab\there;rm -rf*.pdf"),
        "in/_hidden.pdf~" + h8(".hidden.pdf"),
    ]


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
    assert rels(docs) == ["docs/sub/c.png", "docs/sub/deep/d.pdf", "docs/a.pdf"]


def test_special_files_are_not_documents_and_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pdf"
    os.mkfifo(fifo)
    with alarm(5):
        docs, errors = expand_inputs([str(fifo), str(tmp_path)])
    assert docs == []
    # Changed (#8.2): the folder holding only a FIFO is nothing to do, no longer `empty`.
    assert kinds(errors) == [(str(fifo), "not_a_document")]


def test_folder_reports_files_named_like_documents_that_are_not(tmp_path: Path) -> None:
    make_pdf(tmp_path / "good.pdf")
    (tmp_path / "x.pdf").write_bytes(b"")
    (tmp_path / "lies.pdf").write_text("plain text\n")
    (tmp_path / "notes.md").write_text("# not a document, and not named like one\n")
    docs, errors = expand_inputs([str(tmp_path)])
    assert [d.rel.name for d in docs] == ["good.pdf"]
    assert sorted((Path(e.path).name, e.kind) for e in errors) == [("lies.pdf", "not_a_document"), ("x.pdf", "empty")]


# -- C: nothing to do is not an error (#8.2) -----------------------------------------------------


def test_empty_folder_list_and_stdin_are_nothing_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "comments.txt").write_text("# nothing tonight\n\n   \n")
    assert expand_inputs(["inbox"]) == ([], [])
    assert expand_inputs(["@empty.txt", "@comments.txt"]) == ([], [])
    assert expand_inputs(["-"], stdin=io.StringIO("")) == ([], [])
    assert expand_inputs(["-"], stdin=io.BytesIO(b""), null=True) == ([], [])


def test_missing_path_and_explicit_non_document_stay_named_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    docs, errors = expand_inputs(["inbox", "gone.pdf", "notes.txt"])
    assert docs == []
    assert [str(e) for e in errors] == [
        "gone.pdf: missing: no such file or folder",
        "notes.txt: not_a_document: not a PDF or a supported image (by content)",
    ]


# -- E: the output folder is never read as input (#8.6) -------------------------------------------


def make_outputs(out: Path, name: str = "a.pdf", marker: bool = True) -> None:
    """What a run writes for one document: Markdown, JSON, a figure crop, manifest, reports."""
    (out / f"{name}.md").parent.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("# text\n")
    (out / f"{name}.json").write_text("{}")
    make_png(out / f"{name}_images" / "page0001_fig01.jpg")
    (out / ".ocrprune").mkdir(exist_ok=True)
    (out / ".ocrprune" / f"{name}.manifest.json").write_text("{}")
    (out / "report.json").write_text("{}")
    (out / "pages.csv").write_text("a\n")
    if marker:
        (out / OUTPUT_MARKER).write_text("")


def test_output_folder_inside_the_input_folder_is_skipped_by_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "a.pdf")
    make_outputs(tmp_path / "ocr", marker=False)  # first run: no marker yet, --out names it
    docs, errors = expand_inputs(["."], out=Path("ocr"))
    assert (rels(docs), errors) == (["a.pdf"], [])
    os.symlink(tmp_path / "ocr", tmp_path / "ocr-link")
    for spelling in (tmp_path / "ocr-link", tmp_path / "x" / ".." / "ocr", Path("./ocr/")):
        docs, _ = expand_inputs(["."], out=spelling)
        assert rels(docs) == ["a.pdf"]
    docs, _ = expand_inputs(["."])  # without --out and without a marker it is just a folder
    assert rels(docs) == ["a.pdf", "ocr/a.pdf_images/page0001_fig01.jpg"]


def test_marked_output_folder_is_skipped_on_a_later_run_with_another_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "a.pdf")
    make_outputs(tmp_path / "old-out")
    make_outputs(tmp_path / "deep" / "nested-out" / "sub", name="b.pdf")
    (tmp_path / "deep" / "nested-out" / OUTPUT_MARKER).parent.mkdir()
    (tmp_path / "deep" / "nested-out" / OUTPUT_MARKER).write_text("")
    docs, errors = expand_inputs(["."], out=Path("new-out"))
    assert (rels(docs), errors) == (["a.pdf"], [])
    docs, errors = expand_inputs(["**/*.jpg", "*/*/*/*/*.jpg"])
    assert (rels(docs), errors) == ([], [])


def test_output_folder_equal_to_or_above_the_input_skips_only_figure_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_pdf(tmp_path / "inbox" / "a.pdf")
    make_png(tmp_path / "inbox" / "scan.png")
    make_outputs(tmp_path / "inbox", name="a.pdf")  # `convert inbox --out inbox`
    docs, errors = expand_inputs(["inbox"], out=Path("inbox"))
    assert (rels(docs), errors) == (["inbox/a.pdf", "inbox/scan.png"], [])
    docs, _ = expand_inputs(["inbox"], out=Path("."))  # `convert inbox --out .`, marker in inbox
    assert rels(docs) == ["inbox/a.pdf", "inbox/scan.png"]
    docs, _ = expand_inputs(["inbox/**/*.jpg", "inbox/*"], out=Path("inbox"))
    assert rels(docs) == ["inbox/a.pdf", "inbox/scan.png"]


def test_explicitly_named_file_inside_an_output_folder_is_still_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    make_outputs(tmp_path / "out")
    crop = "out/a.pdf_images/page0001_fig01.jpg"
    docs, errors = expand_inputs([crop], out=Path("out"))
    assert (rels(docs), errors) == ([crop], [])
    docs, _ = expand_inputs(["-"], stdin=io.StringIO(crop + "\n"), out=Path("out"))
    assert rels(docs) == [crop]


# -- F: NUL-separated and byte-exact lists (#8.10) ---------------------------------------------


def test_null_separated_stdin_keeps_spaces_newlines_and_leading_blanks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names = ["a b.pdf", "new\nline.pdf", " lead.pdf", "#hash.pdf"]
    for name in names:
        make_pdf(tmp_path / name)
    data = b"\x00".join(n.encode() for n in names) + b"\x00\x00"
    docs, errors = expand_inputs(["-"], stdin=io.BytesIO(data), null=True)
    assert errors == []
    assert [d.display for d in docs] == names
    newline, errors = expand_inputs(["-"], stdin=io.BytesIO(data.replace(b"\x00", b"\n")))
    assert [d.display for d in newline] == ["a b.pdf"]  # split, stripped, `#` lines skipped
    assert kinds(errors) == [("new", "missing"), ("line.pdf", "missing"), ("lead.pdf", "missing")]


def test_stdin_is_read_as_bytes_so_non_utf8_names_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = b"caf\xe9.pdf"
    os.rename(make_pdf(tmp_path / "tmp.pdf"), raw)
    stream = io.TextIOWrapper(io.BytesIO(b"  " + raw + b" \r\n"), encoding="utf-8")
    docs, errors = expand_inputs(["-"], stdin=stream)
    nul, _ = expand_inputs(["-"], stdin=io.BytesIO(raw + b"\x00"), null=True)
    assert errors == []
    assert [os.fsencode(d.display) for d in docs + nul] == [raw, raw]
    assert rels(docs) == rels(nul) == ["caf_.pdf~" + hashlib.sha256(raw).hexdigest()[:8]]


def test_nul_byte_in_a_newline_list_is_a_named_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    docs, errors = expand_inputs(["-"], stdin=io.BytesIO(b"a.pdf\x00b.pdf\n"))
    assert docs == []
    # The message escapes the NUL (one printable line); `path` keeps the name exactly.
    assert [str(e) for e in errors] == [
        "a.pdf\\x00b.pdf: missing: the name contains a NUL byte (NUL-separated list: use -0)"
    ]
    assert [e.path for e in errors] == ["a.pdf\x00b.pdf"]


# -- G: non-regular files and listing errors (#9.3, #9.4) -----------------------------------------


def test_fifo_in_a_folder_is_skipped_and_sniffing_one_never_blocks(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.pdf")
    make_pdf(tmp_path / "real.pdf")
    with alarm(5):
        docs, errors = expand_inputs([str(tmp_path)])
        with pytest.raises(NotRegularFileError):
            sniff_kind(tmp_path / "pipe.pdf")
    assert [d.path.name for d in docs] == ["real.pdf"]
    assert errors == []


def test_symlink_loop_and_dangling_link_in_a_folder_are_named_failures(tmp_path: Path) -> None:
    make_pdf(tmp_path / "good.pdf")
    os.symlink(tmp_path / "loop.pdf", tmp_path / "loop.pdf")
    os.symlink(tmp_path / "gone.pdf", tmp_path / "dangling.pdf")
    docs, errors = expand_inputs([str(tmp_path), str(tmp_path / "loop.pdf")])
    assert [d.path.name for d in docs] == ["good.pdf"]
    assert [(Path(e.path).name, e.kind, e.detail) for e in errors] == [
        ("dangling.pdf", "missing", "broken symbolic link"),
        ("loop.pdf", "unreadable", "Too many levels of symbolic links"),
    ]


def test_permission_denied_and_vanished_files_while_listing_are_named_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pdf(tmp_path / "ok" / "a.pdf")
    (tmp_path / "locked").mkdir()
    real_scandir, real_walk = os.scandir, os.walk

    def scandir(path: object = ".") -> object:
        if os.fspath(path).endswith("locked"):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    def walk(top: object, **kw: object) -> object:
        for root, dirs, files in real_walk(top, **kw):  # type: ignore[arg-type]
            yield root, dirs, files + (["vanished.pdf"] if root.endswith("ok") else [])

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "walk", walk)
    docs, errors = expand_inputs([str(tmp_path)])
    assert [d.path.name for d in docs] == ["a.pdf"]
    assert [(os.path.relpath(e.path, tmp_path), e.kind, e.detail) for e in errors] == [
        ("locked", "unreadable", "Permission denied"),
        ("ok/vanished.pdf", "missing", "No such file or directory"),
    ]


def test_non_utf8_names_in_a_folder_are_expanded_and_displayed(tmp_path: Path) -> None:
    os.rename(make_pdf(tmp_path / "x.pdf"), os.fsencode(tmp_path) + b"/r\xe9sum\xe9.pdf")
    docs, errors = expand_inputs([str(tmp_path)], base=tmp_path)
    assert errors == []
    assert [os.fsencode(d.display) for d in docs] == [os.fsencode(tmp_path) + b"/r\xe9sum\xe9.pdf"]
    assert rels(docs) == ["r_sum_.pdf~" + hashlib.sha256(b"r\xe9sum\xe9.pdf").hexdigest()[:8]]
