"""`run(config) -> RunOutcome`: inputs, streaming raster, batches, writers, report.

The batch contract, whatever the inputs and whatever the model side does:
- every input ends written, skipped as already done (reported with the statuses its manifest
  recorded), or as a named failure; every page that went in has exactly one status out. This is
  checked at the end of the run: a document or page the pipeline lost becomes an `internal`
  failure in the report instead of vanishing;
- pages from many documents share batches, and each document's pages are written in page order;
- memory stays bounded: only the render queue and the current batch hold page images;
- each finished page is checkpointed under `.ocrprune/` as it completes, so an interrupted run
  resumes at the first unfinished page; a document's final files appear atomically, manifest last,
  once all its pages are done, byte-identical to an uninterrupted run's (timings aside);
- SIGINT, SIGTERM and SIGHUP stop the run the same way: finished documents and page checkpoints are
  kept, the report says `interrupted`, and the exit code is 128 + the signal number;
- one run at a time writes into an output folder (`RunLock`, exit 75 for the second);
- the pipeline raises `OcrpruneError`s for run-level problems and never exits or prints.

Torch and transformers are imported only once there is a document to convert (after the inputs
are expanded and the output folder is checked), so usage problems, missing inputs, an unwritable
`--out` and an empty input set are reported at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, TextIO

from ocrprune.config import RunConfig, keep_label
from ocrprune.errors import ExitCode, InputError, Interrupted, UnsafeOutputError
from ocrprune.inputs import Document, expand_inputs, fallback_rel
from ocrprune.names import escape_name
from ocrprune.postprocess.loops import ends_in_loop
from ocrprune.progress import NoProgress, ProgressSink
from ocrprune.records import (
    DocResult,
    KeepInfo,
    PageResult,
    RunInfo,
    RunSummary,
    Timings,
    page_from_record,
    page_to_record,
)
from ocrprune.report import build_report, exit_code_for, pages_csv, summarize
from ocrprune.run.batching import BatchFailure, run_split
from ocrprune.run.document import DocState, PlannedDoc, input_digest
from ocrprune.run.resume import (
    PAGE_CAP,
    expected_revision,
    legacy_options,
    output_options,
    page_reusable,
)
from ocrprune.run.signals import signals_as_interrupts
from ocrprune.runtime import open_backend, resolve_device_dtype
from ocrprune.runtime.api import Backend, LoadedInfo, describe_run
from ocrprune.writers import files
from ocrprune.writers.json import render_json, render_jsonl
from ocrprune.writers.markdown import render_markdown

if TYPE_CHECKING:
    from ocrprune.raster import RenderedPage
    from ocrprune.runtime.api import PageOutput

log = logging.getLogger("ocrprune")

# Opens the engine when the first page needs it: (engine, run description, batch size).
EngineFactory = Callable[[], "tuple[Backend, RunInfo, int]"]

_STATUS_NOTES = {
    "length": "stopped at the token limit without end-of-sequence (text kept; raise --max-new-tokens)",
    "repetition": "stopped at the token limit in a loop (the output repeats itself)",
    "timeout": "generation stopped at --page-timeout",
}


@dataclass
class RunOutcome:
    """What a run did; the CLI prints the summary and exits with `exit_code`."""

    summary: RunSummary
    docs: list[DocResult]
    report: dict[str, Any] | None
    exit_code: ExitCode | int
    run_info: RunInfo | None = None
    report_written: bool = False  # report.json and pages.csv are in --out (not after an early stop)


def _peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024.0 if sys.platform != "darwin" else usage / 1024.0 / 1024.0


class Run:
    """The state of one run; `execute` drives it."""

    def __init__(
        self,
        config: RunConfig,
        progress: ProgressSink,
        emit: Callable[[str], None] | None,
        engine_factory: EngineFactory | None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.emit = emit
        self.engine_factory = engine_factory
        self.docs_out: list[DocResult] = []
        self.stop = False
        self.signal = 0
        self.run_info: RunInfo | None = None
        self.engine: Backend | None = None
        self.batch_size = 1
        self.single_stdout_doc = False
        self.options: dict[str, Any] = {}
        self.legacy_options: dict[str, Any] = {}
        self.revision: str | None = None
        self.dtype_name: str = config.model.dtype
        self.device_name: str = config.model.device  # resolved with the dtype (`_resolve_dtype`)
        self.inputs_total = 0
        self.input_names: list[str] = []  # every input's shown name, for `not_reached`
        self.nothing_to_do = False
        self.output_ready = False
        self.pending_records: list[DocResult] = []  # stdout: failures emitted once run_info is known
        # Sortable by start time, unique even for two runs in the same second.
        now = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now // 1000 % 10**6:06d}Z"
        self.run_id = f"{stamp}-{os.getpid()}-{secrets.token_hex(2)}"
        self.stack = contextlib.ExitStack()

    # -- documents ---------------------------------------------------------------------------
    def _record(self, result: DocResult) -> None:
        self.docs_out.append(result)
        self.progress.document_finished()

    def _fail_input(self, error: InputError, rel: PurePosixPath | None = None) -> None:
        """An input that never reached the raster stream (missing, unreadable, vanished)."""
        log.error("%s", error, extra={"file": escape_name(error.path), "kind": error.kind})
        shown = escape_name(error.path)
        stem = rel.name if rel is not None else shown
        result = DocResult(source=shown, stem=stem, error=error.detail, error_kind=error.kind)
        self._record(result)
        if self.emit is not None:
            self.pending_records.append(result)
        if self.config.fail_fast:
            self.stop = True

    def _log_pages(self, state: DocState, pages: tuple[PageResult, ...]) -> None:
        """One error line per page that is not ok (so `-q` still names each), except that a run
        of more than `_LOG_RUN` consecutive pages failing the same way is one line (`pages
        4-100000: render_error: ...`): a PDF that lies about its page count costs one line, not
        100,000."""
        for first, last, status, error in _failure_runs(pages):
            spans = [(first, last)] if last - first >= _LOG_RUN else [(n, n) for n in range(first, last + 1)]
            for start, end in spans:
                log.error(
                    "%s %s: %s%s",
                    state.shown,
                    f"page {start}" if start == end else f"pages {start}-{end}",
                    status,
                    f": {error}" if error else "",
                    extra={"file": state.shown, "page": start, "kind": status},
                )

    def _finish(self, state: DocState) -> None:
        """Write a complete document (outputs then manifest) and record it. A document whose
        outputs would go through a planted link is recorded as an `unsafe_output` failure and
        not written; the batch goes on."""
        pages = tuple(state.results[p] for p in sorted(state.results))
        error = state.error.detail if state.error is not None else None
        kind = state.error.kind if state.error is not None else None
        result = DocResult(
            source=state.shown,
            stem=state.rel.name,
            pages=pages,
            error=error,
            error_kind=kind,
            page_count=len(state.expected),
            reused=tuple(sorted(p for p in state.reuse if p in state.results)),
        )
        if state.error is not None:
            log.error("%s", state.error, extra={"file": state.shown, "kind": state.error.kind})
        self._log_pages(state, pages)
        assert self.run_info is not None
        if self.emit is not None:
            self._finish_record(result)
            self._emit_document(result)
            return
        assert state.paths is not None
        try:
            if state.unsafe is not None:
                raise state.unsafe
            if state.error is not None and not state.opened:
                self._forget_old_outputs(state)  # nothing readable: nothing to write
            else:
                self._write(state, result)
        except UnsafeOutputError as unsafe:
            result = dataclasses.replace(result, error=str(unsafe), error_kind=unsafe.kind)
            log.error("%s: %s: %s", state.shown, unsafe.kind, unsafe, extra={"file": state.shown, "kind": unsafe.kind})
        self._finish_record(result)

    def _finish_record(self, result: DocResult) -> None:
        self._record(result)
        if self.config.fail_fast and not result.ok:
            self.stop = True

    def _forget_old_outputs(self, state: DocState) -> None:
        """An input that converted once and now fails to open: remove its old outputs only if
        its bytes changed since (old text is never taken for new). Outputs of the same bytes
        stay (a forgotten password, a renderer that now fails), and a run that selects pages
        (`--pages`) never removes anything."""
        assert state.paths is not None and state.error is not None
        if state.error.kind == "no_pages_selected" or self.config.raster.pages:
            return
        old = files.read_manifest(state.paths)
        key = old.get("key") if old is not None else None
        recorded = key.get("input_sha256") if isinstance(key, dict) else None
        if recorded is None or recorded == state.digest:
            return
        if files.remove_document(state.paths):
            log.warning(
                "%s: removed the outputs of an earlier conversion (the input changed and now fails to open)",
                state.shown,
                extra={"file": state.shown},
            )

    def _write(self, state: DocState, result: DocResult) -> None:
        """The document's files, then its manifest (the key `_plan` checks a re-run against)."""
        assert state.paths is not None and self.run_info is not None
        image_dir = f"{state.rel.name}_images"
        formats = self.config.formats
        markdown = (
            render_markdown(result, page_separator=self.config.page_separator, image_dir=image_dir)
            if "md" in formats
            else None
        )
        json_text = render_json(result, self.run_info, image_dir=image_dir) if "json" in formats else None
        figures = [f for page in result.pages for f in page.figures]
        manifest = files.manifest_for(
            state.digest,
            self.options,
            self.config.model.model,
            self.revision,
            [p.status for p in result.pages],
            source=state.shown,
            source_path=escape_name(os.path.normpath(state.doc.path)),
            pages=[self._page_record(state, p, full=False) for p in result.pages],
            error=result.error,
            error_kind=result.error_kind,
        )
        files.write_document(state.paths, markdown, json_text, figures, manifest)
        if result.ok:
            files.clear_checkpoints(state.paths)
        log.debug("wrote %s", state.paths.md if markdown is not None else state.paths.json)

    def _page_record(self, state: DocState, page: PageResult, *, full: bool) -> dict[str, Any]:
        """A page's checkpoint or manifest record, with the token cap it was produced under."""
        cap = state.caps.get(page.page, self.config.generation.max_new_tokens)
        return page_to_record(page, full=full) | {PAGE_CAP: cap}

    def _emit_document(self, result: DocResult) -> None:
        assert self.emit is not None and self.run_info is not None
        if self.single_stdout_doc and self.config.formats == ("json",):
            self.emit(render_json(result, self.run_info, figures_written=False))
        elif self.single_stdout_doc:
            self.emit(
                render_markdown(
                    result, page_separator=self.config.page_separator, image_dir="", figures_written=False
                )
            )
        else:
            self.emit(render_jsonl(result, self.run_info, figures_written=False))

    # -- pages ---------------------------------------------------------------------------------
    def _set_page(self, state: DocState, result: PageResult) -> None:
        """Record a finished page and checkpoint it, so a re-run never redoes it."""
        state.results[result.page] = result
        if state.paths is not None and state.key and state.unsafe is None:
            try:
                files.save_checkpoint(state.paths, state.key, self._page_record(state, result, full=True))
            except UnsafeOutputError as unsafe:
                state.unsafe = unsafe  # reported once, when the document finishes

    def _page_result(self, page: "RenderedPage", output: "PageOutput") -> PageResult:
        from ocrprune.postprocess import postprocess_page

        timings = Timings(
            render=page.render_ms,
            preprocess=output.preprocess_ms,
            encode=output.encode_ms,
            prune=output.prune_ms,
            prefill=output.prefill_ms,
            decode=output.decode_ms,
            total=page.render_ms
            + output.preprocess_ms
            + output.encode_ms
            + output.prune_ms
            + output.prefill_ms
            + output.decode_ms,
        )
        width, height = page.image.size if page.image is not None else (0, 0)
        status = output.status
        if status == "length" and ends_in_loop(output.token_ids, output.raw_text):
            status = "repetition"  # capped, and the output repeats itself (see `loops.py`)
        note = output.error or _STATUS_NOTES.get(status)
        try:
            markdown, boxes, figures = postprocess_page(output.raw_text, page.image, page.page)
        except Exception as exc:  # noqa: BLE001 - a failure after the model costs this page only
            log.debug("post-processing failed on page %d", page.page, exc_info=True)
            markdown, boxes, figures = "", (), ()
            status, note = "model_error", f"post-processing failed: {type(exc).__name__}: {exc}"
        return PageResult(
            page=page.page,
            status=status,  # type: ignore[arg-type]
            markdown=markdown,
            raw_text=output.raw_text,
            boxes=boxes,
            figures=figures,
            tokens=output.tokens,
            timings=timings,
            keep=output.keep,
            width=width,
            height=height,
            error=note,
        )

    def _failed_page(self, page: "RenderedPage", status: str, message: str) -> PageResult:
        width, height = page.image.size if page.image is not None else (0, 0)
        return PageResult(
            page=page.page,
            status=status,  # type: ignore[arg-type]
            keep=KeepInfo(setting=keep_label(self.config.prune.keep), ratio=0.0, method=self.config.prune.method),
            timings=Timings(render=page.render_ms, total=page.render_ms),
            width=width,
            height=height,
            error=message,
        )

    def _run_pages(self, items: list[tuple[DocState, "RenderedPage"]]) -> None:
        """Run a batch through the shared driver (split on failure, one result per page)."""
        engine = self.engine
        assert engine is not None

        def deliver(item: tuple[DocState, "RenderedPage"], output: "PageOutput | BatchFailure") -> None:
            state, page = item
            if isinstance(output, BatchFailure):
                self._set_page(state, self._failed_page(page, "model_error", output.message))
            else:
                self._set_page(state, self._page_result(page, output))

        run_split(items, lambda batch: engine.run([page.image for _, page in batch]), deliver, engine.recover)

    # -- the run -------------------------------------------------------------------------------
    def execute(self, stdin: TextIO | None) -> RunOutcome:
        started = time.perf_counter()
        with self.stack, signals_as_interrupts():
            try:
                self._prepare_and_convert(stdin)
            except KeyboardInterrupt as exc:
                self.signal = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
                name = signal.Signals(self.signal).name
                log.error(
                    "interrupted (%s): finished documents and pages are kept; re-run to convert the rest",
                    name,
                )
            finally:
                self.progress.close()
            return self._conclude(started)

    def _prepare_and_convert(self, stdin: TextIO | None) -> None:
        pending = self._plan_all(stdin)
        if pending and not self.stop:
            self._convert(pending)

    def _plan_all(self, stdin: TextIO | None) -> list[DocState]:
        """Everything a run does before converting: expand the inputs, prepare and lock `--out`,
        hash the inputs and skip what is done. Returns the documents left to convert (a
        distributed runner reuses this and replaces `_convert`)."""
        config = self.config
        if config.raster.renderer != "mupdf":
            from ocrprune.raster import check_renderer

            check_renderer(config.raster.renderer)  # a missing extra fails before any work (exit 5)
        docs, problems = expand_inputs(
            list(config.inputs),
            glob=config.glob,
            stdin=stdin,
            base=config.base,
            out=None if self.emit is not None else config.out,
            null=config.null_input,
        )
        self.inputs_total = len(docs) + len(problems)
        self.input_names = [escape_name(p.path) for p in problems] + [escape_name(d.display) for d in docs]
        # One input named with --stdout prints one document (Markdown or JSON), failed or not.
        self.single_stdout_doc = self.emit is not None and self.inputs_total == 1
        self.progress.start(self.inputs_total)
        for problem in problems:
            self._fail_input(problem)
        if not docs and not problems:
            self.nothing_to_do = True
            log.warning("nothing to do: no documents found in %s", ", ".join(escape_name(i) for i in config.inputs))
            return []
        if docs:
            self._before_output()
        if self.emit is None:
            files.prepare_output_root(config.out)
            self.stack.enter_context(files.RunLock(config.out))
            self.output_ready = True
        if not docs or self.stop:
            return []  # every input failed: said without loading torch or a model

        self.dtype_name = self._resolve_dtype()
        self.options = output_options(config, self.dtype_name)
        self.legacy_options = legacy_options(config, self.dtype_name)
        self.revision = expected_revision(config)
        layout = files.OutputLayout(config.out) if self.emit is None else None
        pending: list[DocState] = []
        for index, doc in enumerate(docs):
            state = self._plan(index, doc, layout)
            if state is not None:
                pending.append(state)
            if self.stop:
                break
        skipped = [d for d in self.docs_out if d.skipped]
        if skipped:
            log.info("skipped %d document(s) already converted with the same options (use --force to redo)", len(skipped))
            not_ok = sum(1 for d in skipped if not d.ok)
            if not_ok:
                log.warning(
                    "%d skipped document(s) have failed or capped pages recorded; --retry-failed redoes those pages",
                    not_ok,
                )
        return pending

    def _before_output(self) -> None:
        """Called once there are documents, before `--out` is prepared and locked (the Ray runner
        joins its cluster here, so a bad address never holds the lock)."""

    def _resolve_dtype(self) -> str:
        """The dtype the model will run in, as manifests record it (imports torch)."""
        self.device_name, dtype = resolve_device_dtype(self.config.model)
        return dtype

    def _plan(self, index: int, doc: Document, layout: files.OutputLayout | None) -> DocState | None:
        """Where a document goes and what is already done: None if skipped or failed here."""
        shown = escape_name(doc.display)
        if layout is None:
            return DocState(index=index, doc=doc, shown=shown, rel=doc.rel, paths=None)
        rel = doc.rel
        try:
            paths = layout.paths_for(rel)
            source_path = escape_name(os.path.normpath(doc.path))
            if files.taken_by_other(paths, source_path):
                rel = fallback_rel(rel, os.fspath(doc.path))
                log.warning("%s: output name %s is taken; writing to %s", shown, escape_name(str(doc.rel)), escape_name(str(rel)))
                paths = layout.paths_for(rel)
            try:
                digest = input_digest(doc)
            except InputError as error:
                self._fail_input(error, rel)
                return None
            key = files.manifest_key(digest, self.options, self.config.model.model, self.revision)
            state = DocState(index=index, doc=doc, shown=shown, rel=rel, paths=paths, digest=digest, key=key)
            if self.config.force:
                files.clear_checkpoints(paths)
                return state
            manifest = files.read_manifest(paths)
            recorded = self._already_done(state, manifest) if manifest is not None else None
            if recorded is not None:
                self._record(recorded)
                log.debug("skipping %s: already done with the same options", shown)
                return None
            self._load_reuse(state)
        except UnsafeOutputError as unsafe:
            # A link planted where this document's files go: this document only, never the batch.
            self._fail_input(InputError(doc.display, unsafe.kind, str(unsafe)), rel)
            return None
        return state

    def _already_done(self, state: DocState, manifest: dict[str, Any]) -> DocResult | None:
        """The document as its manifest recorded it if it is to be skipped, else None. Skipped
        when the manifest matches the key and its outputs are intact, and every recorded page
        stands under this run's token cap (see `resume.page_reusable`); with `--retry-failed`,
        only if every page is `ok`. Manifests of 0.1.0, whose key held the cap, count when the
        cap is unchanged."""
        assert state.paths is not None
        formats, retry = self.config.formats, self.config.retry_failed
        if files.is_done(state.paths, state.key, formats, manifest):
            records = manifest.get("pages")
            cap = self.config.generation.max_new_tokens
            pages_stand = isinstance(records, list) and all(
                isinstance(r, dict) and page_reusable(r, cap, retry_failed=retry) for r in records
            )
        else:
            legacy = files.manifest_key(state.digest, self.legacy_options, self.config.model.model, self.revision)
            pages_stand = files.is_done(state.paths, legacy, formats, manifest)
        if not pages_stand:
            return None
        recorded = _recorded_document(state.shown, state.rel, manifest)
        return None if retry and not recorded.ok else recorded

    def _load_reuse(self, state: DocState) -> None:
        """Take the pages an earlier (interrupted, capped or partly failed) run checkpointed for
        this document that stand under this run's settings (`resume.page_reusable`)."""
        assert state.paths is not None
        cap = self.config.generation.max_new_tokens
        for page_no, record in files.load_checkpoints(state.paths, state.key).items():
            try:
                page = page_from_record(record)
            except (KeyError, TypeError, ValueError):
                continue
            if not page_reusable(record, cap, retry_failed=self.config.retry_failed):
                continue
            state.reuse[page_no] = page
            recorded_cap = record.get(PAGE_CAP)
            state.caps[page_no] = recorded_cap if isinstance(recorded_cap, int) else cap
        if state.reuse:
            log.info("%s: resuming, %d page(s) already converted", state.shown, len(state.reuse))

    def _conclude(self, started: float) -> RunOutcome:
        """Account for every input, build the report and write it (also after an interrupt)."""
        config = self.config
        if self.run_info is None:
            self.run_info = self._provisional_info()
        for result in self.pending_records:
            if self.emit is not None:
                self._emit_document(result)
        accounted = len(self.docs_out)
        if not self.signal and not self.stop and accounted != self.inputs_total:
            # Never drop an input silently: if the pipeline lost one, say so as a failure.
            log.error("internal error: %d input(s) not accounted for", self.inputs_total - accounted)
            for _ in range(self.inputs_total - accounted):
                self.docs_out.append(
                    DocResult(source="?", stem="?", error="lost by the pipeline (a bug)", error_kind="internal")
                )
        reached = {d.source for d in self.docs_out}
        not_reached = [n for n in self.input_names if n not in reached] if self.signal or self.stop else []
        if not_reached:
            log.warning("%d input(s) not converted by this run (listed in report.json); re-run to convert them", len(not_reached))
        summary = summarize(
            self.docs_out, wall_seconds=time.perf_counter() - started, signal=self.signal, not_reached=not_reached
        )
        if self.nothing_to_do:
            return RunOutcome(summary, self.docs_out, None, ExitCode.OK, self.run_info)
        report = build_report(self.docs_out, summary, self.run_info, _peak_rss_mb(), self._peak_gpu_mb())
        report["run_id"] = self.run_id
        report.update(self._report_extra())
        written = self.emit is None and self.output_ready
        if written:
            files.write_run_report(config.out, _json(report), pages_csv(self.docs_out), self.run_id)
        return RunOutcome(summary, self.docs_out, report, exit_code_for(summary), self.run_info, written)

    def _provisional_info(self) -> RunInfo:
        """The run description before (or without) a loaded model: for documents that never
        reached it, and for the report of a run that loaded none."""
        config = self.config
        expected = LoadedInfo(
            model=config.model.model,
            revision=self.revision if self.revision is not None else expected_revision(config),
            device=self.device_name,
            dtype=self.dtype_name,
            dummy=config.model.is_tiny_random,
        )
        return describe_run(expected, generation=config.generation, prune=config.prune, engine=config.engine)

    def _peak_gpu_mb(self) -> float | None:
        return self.engine.peak_gpu_mb() if self.engine is not None else None

    def _report_extra(self) -> dict[str, Any]:
        """Keys a runner adds at the end of the report (the Ray runner: per-worker counts)."""
        return {}

    def _convert(self, pending: list[DocState]) -> None:
        """Stream, batch and run every pending document (an interrupt propagates to `execute`)."""
        from ocrprune.raster import (
            DocDone,
            DocFailed,
            DocOpened,
            PageRendered,
            PageStream,
            RenderedPage,
        )

        factory = self.engine_factory or (lambda: build_engine(self.config))
        if self.run_info is None:
            self.run_info = self._provisional_info()  # until a page needs the model

        def ensure_engine() -> None:
            """The model loads when the first page needs it: a run whose pending inputs all fail
            to open (or render) never loads it."""
            if self.engine is None:
                self.engine, self.run_info, self.batch_size = factory()

        batch: list[tuple[DocState, RenderedPage]] = []
        stream = PageStream([s.doc for s in pending], self.config.raster, max_pages_in_flight=self.config.queue_pages)
        active: dict[int, DocState] = {}
        discovered = 0

        def finish_ready() -> None:
            for index in [i for i, s in active.items() if s.complete()]:
                self._finish(active.pop(index))

        def flush() -> None:
            if batch:
                count = len(batch)
                self._run_pages(list(batch))
                batch.clear()
                self.progress.pages_finished(count)
            finish_ready()

        def discover() -> None:
            nonlocal discovered
            discovered += 1
            if discovered == len(pending):
                self.progress.all_pages_known()

        with stream:
            for event in stream:
                state = pending[event.index]  # the stream numbers documents by their place in `pending`
                active[event.index] = state
                if isinstance(event, DocOpened):
                    state.opened = True
                    state.expected = list(event.page_numbers)
                    self.progress.pages_known(len(state.expected))
                    reused = [p for p in state.expected if p in state.reuse]
                    for page_no in reused:
                        state.results[page_no] = state.reuse[page_no]
                    if reused:
                        self.progress.pages_finished(len(reused))
                    discover()
                elif isinstance(event, PageRendered):
                    page = event.page
                    if page.page in state.reuse:
                        pass  # converted by an earlier run: its checkpoint stands
                    elif page.error is not None or page.image is None:
                        message = page.error.detail if page.error is not None else "no image"
                        self._set_page(state, self._failed_page(page, "render_error", message))
                        self.progress.pages_finished(1)
                    else:
                        ensure_engine()
                        batch.append((state, page))
                        if len(batch) >= self.batch_size:
                            flush()
                elif isinstance(event, DocFailed):
                    if not state.opened:
                        discover()
                    state.error = event.error
                    state.rendered_all = True
                    queued = {p.page for s, p in batch if s is state}
                    # Not checkpointed one by one: a PDF claiming 100,000 pages would write 100,000
                    # files; the stream says the same again on a re-run, at no cost.
                    for page_no in state.expected:
                        if page_no not in state.results and page_no not in queued:
                            missing = RenderedPage(page=page_no, image=None, render_ms=0.0)
                            state.results[page_no] = self._failed_page(missing, "render_error", event.error.detail)
                elif isinstance(event, DocDone):
                    state.rendered_all = True
                finish_ready()
                if self.stop:
                    break
            if not self.stop:
                flush()
        if not self.stop:
            self._complete_leftovers(pending, active)

    def _complete_leftovers(self, pending: list[DocState], active: dict[int, DocState]) -> None:
        """Every page gets a status: a document the stream or the engine left unfinished (a bug)
        is completed here with `internal`/`model_error` statuses instead of vanishing."""
        from ocrprune.raster import RenderedPage

        for position, state in enumerate(pending):
            if position in active:
                active.pop(position)
            elif state.opened or state.error is not None:
                continue  # finished normally (finished documents leave `active`)
            if not state.opened and state.error is None:
                state.error = InputError(state.doc.display, "internal", "the raster stream never delivered it")
            for page_no in state.expected:
                if page_no not in state.results:
                    lost = RenderedPage(page=page_no, image=None, render_ms=0.0)
                    self._set_page(state, self._failed_page(lost, "model_error", "no result (internal error)"))
            log.error("%s: internal error: the pipeline left this document unfinished", state.shown)
            state.rendered_all = True
            self._finish(state)


class DocConverter:
    """Worker mode of `_Run`: converts pre-planned documents one at a time with an engine loaded
    once. No input expansion, no lock, no run report, but the same page checkpoints, manifests and
    atomic writes as a local run, so local and distributed runs resume each other. `convert` never
    raises for a document: anything unexpected becomes a failed `DocResult` (`internal`)."""

    def __init__(self, config: RunConfig, engine: Backend, info: RunInfo, batch_size: int) -> None:
        self.config = config
        self.engine, self.info, self.batch_size = engine, info, batch_size
        probe = Run(config, NoProgress(), None, None)
        self.dtype_name = probe._resolve_dtype()
        self.options = output_options(config, self.dtype_name)
        self.revision = expected_revision(config)
        self.layout = files.OutputLayout(config.out)

    def convert(self, planned: PlannedDoc) -> DocResult:
        shown = escape_name(planned.doc.display)
        try:
            return self._convert(planned, shown)
        except UnsafeOutputError as unsafe:  # a link planted where this document's files go
            log.error("%s: %s: %s", shown, unsafe.kind, unsafe, extra={"file": shown, "kind": unsafe.kind})
            return DocResult(source=shown, stem=planned.rel.name, error=str(unsafe), error_kind=unsafe.kind)
        except Exception as exc:  # noqa: BLE001 - a worker never raises for a document
            log.debug("%s: worker failed", shown, exc_info=True)
            error = InputError(planned.doc.display, "internal", f"worker failed: {type(exc).__name__}: {exc}")
            log.error("%s", error, extra={"file": shown, "kind": "internal"})
            return DocResult(source=shown, stem=planned.rel.name, error=error.detail, error_kind="internal")

    def _convert(self, planned: PlannedDoc, shown: str) -> DocResult:
        run = Run(self.config, NoProgress(), None, lambda: (self.engine, self.info, self.batch_size))
        run.dtype_name, run.options, run.revision = self.dtype_name, self.options, self.revision
        run.run_info = self.info  # the loaded engine's description, for every document
        key = files.manifest_key(planned.digest, self.options, self.config.model.model, self.revision)
        if key != planned.key:
            log.warning(
                "%s: this worker's options differ from the driver's (dtype %s): a re-run may redo it",
                shown, self.dtype_name, extra={"file": shown},
            )
        state = DocState(
            index=0, doc=planned.doc, shown=shown, rel=planned.rel,
            paths=self.layout.paths_for(planned.rel), digest=planned.digest, key=key,
        )
        run._load_reuse(state)
        run._convert([state])
        if len(run.docs_out) != 1:
            raise RuntimeError(f"{len(run.docs_out)} results for one document")
        return run.docs_out[0]


_LOG_RUN = 5  # consecutive identical page failures logged one by one; a longer run is one line


def _failure_runs(pages: tuple[PageResult, ...]) -> Iterator[tuple[int, int, str, str | None]]:
    """(first, last, status, error) for each run of consecutive pages that are not ok and fail
    with the same status and error."""
    run: list[Any] | None = None
    for page in pages:
        if page.status == "ok":
            if run is not None:
                yield tuple(run)  # type: ignore[misc]
                run = None
            continue
        if run is not None and run[1] + 1 == page.page and (run[2], run[3]) == (page.status, page.error):
            run[1] = page.page
            continue
        if run is not None:
            yield tuple(run)  # type: ignore[misc]
        run = [page.page, page.page, page.status, page.error]
    if run is not None:
        yield tuple(run)  # type: ignore[misc]


def _recorded_document(shown: str, rel: PurePosixPath, manifest: dict[str, Any]) -> DocResult:
    """A skipped document as its manifest recorded it (statuses and figures, no text)."""
    pages: list[PageResult] = []
    records = manifest.get("pages")
    statuses = manifest.get("page_statuses") or []
    try:
        if isinstance(records, list) and len(records) == len(statuses):
            pages = [page_from_record(r) for r in records]
        else:
            pages = [PageResult(page=n, status=s) for n, s in enumerate(statuses, start=1)]
    except (KeyError, TypeError, ValueError):
        pages = [PageResult(page=n, status="ok" if s == "ok" else "model_error") for n, s in enumerate(statuses, start=1)]
    return DocResult(
        source=shown,
        stem=rel.name,
        pages=tuple(pages),
        error=manifest.get("error"),
        error_kind=manifest.get("error_kind"),
        page_count=len(pages),
        skipped=True,
    )


def _json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def build_engine(config: RunConfig) -> tuple[Backend, RunInfo, int]:
    """Open the configured engine (imports torch; vLLM only for `--engine vllm`), pick the batch size."""
    engine = open_backend(config.engine, config.model, config.generation, config.prune)
    info = describe_run(engine.loaded_info(), generation=config.generation, prune=config.prune, engine=config.engine)
    size = config.batch_size or engine.batch_size_hint()
    log.info(
        "model %s on %s (%s), engine %s, mode %s, keep %s, batch size %d",
        info.model, info.device, info.dtype, info.engine, info.mode, info.keep, size,
    )
    return engine, info, size
