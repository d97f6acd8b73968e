"""`run(config) -> RunOutcome`: inputs, streaming raster, GPU batches, writers, report.

Guarantees, whatever the inputs:
- every document ends written (or skipped as already done) or as a named failure, and every page
  that went in has exactly one status out; nothing is dropped;
- pages from many documents share batches, and each document's pages are written in page order;
- memory stays bounded: only the render queue and the current batch hold page images;
- a document's outputs are written atomically, its manifest last, only once all its pages are done,
  so a crash or Ctrl-C never leaves a file a re-run would trust;
- the pipeline raises `OcrpruneError`s for run-level problems and never exits or prints.

Torch and transformers are imported inside `run()` only (through the runtime), so the CLI starts
instantly and this module can be imported anywhere.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from . import __version__
from .batching import auto_batch_size, halves
from .config import RunConfig, keep_label
from .errors import ExitCode, InputError
from .inputs import Document, expand_inputs
from .postprocess import postprocess_page
from .progress import NoProgress, ProgressSink
from .raster import DocDone, DocFailed, DocOpened, PageRendered, PageStream, RenderedPage
from .records import DocResult, KeepInfo, PageResult, RunInfo, RunSummary, Timings
from .report import build_report, exit_code_for, pages_csv, summarize
from .resume import expected_revision, output_options
from .writers import files
from .writers.json import render_json, render_jsonl
from .writers.markdown import render_markdown

if TYPE_CHECKING:
    from .runtime.engine import PageOutput

log = logging.getLogger("ocrprune")

# A document whose output name equals the run report's would overwrite it (`report.json`).
_RESERVED_STEMS = {"report"}


class PageEngine(Protocol):
    """What the pipeline needs from the model runtime (the seam tests inject failures at)."""

    def run(self, images: list[Any]) -> list["PageOutput"]: ...


@dataclass
class RunOutcome:
    """What a run did; the CLI prints the summary and exits with `exit_code`."""

    summary: RunSummary
    docs: list[DocResult]
    report: dict[str, Any] | None
    exit_code: ExitCode
    run_info: RunInfo | None = None


@dataclass
class _DocState:
    """A document in flight: its pages arrive out of batch order and are sorted at the end."""

    doc: Document
    rel: PurePosixPath
    digest: str
    paths: files.DocPaths | None
    expected: list[int] = field(default_factory=list)
    results: dict[int, PageResult] = field(default_factory=dict)
    opened: bool = False
    rendered_all: bool = False
    error: InputError | None = None

    def complete(self) -> bool:
        if self.error is not None and not self.opened:
            return True
        # Results are only ever recorded for expected pages, so counting them is enough.
        return self.rendered_all and len(self.results) == len(self.expected)


def _peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024.0 if sys.platform != "darwin" else usage / 1024.0 / 1024.0


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class _Run:
    """The state of one run; `execute` drives it."""

    def __init__(
        self,
        config: RunConfig,
        progress: ProgressSink,
        emit: Callable[[str], None] | None,
        engine_factory: Callable[[], tuple[PageEngine, RunInfo, int]] | None,
    ) -> None:
        self.config = config
        self.progress = progress
        self.emit = emit
        self.engine_factory = engine_factory
        self.docs_out: list[DocResult] = []
        self.skipped = 0
        self.stop = False
        self.run_info: RunInfo | None = None
        self.engine: PageEngine | None = None
        self.batch_size = 1
        self.single_stdout_doc = False
        self.options: dict[str, Any] = {}

    # -- documents ---------------------------------------------------------------------------
    def _fail_doc(self, display: str, rel: PurePosixPath | None, error: InputError) -> None:
        log.error("%s", error, extra={"file": display, "kind": error.kind})
        stem = rel.name if rel is not None else display
        self.docs_out.append(DocResult(source=display, stem=stem, error=str(error), error_kind=error.kind))
        if self.config.fail_fast:
            self.stop = True

    def _finish(self, state: _DocState) -> None:
        """Write a complete document (outputs then manifest) and record it."""
        pages = tuple(state.results[p] for p in sorted(state.results))
        error = str(state.error) if state.error is not None else None
        kind = state.error.kind if state.error is not None else None
        if state.error is not None and not state.opened:
            self._fail_doc(state.doc.display, state.rel, state.error)
            self.progress.document_finished()
            return
        result = DocResult(
            source=state.doc.display,
            stem=state.rel.name,
            pages=pages,
            error=error,
            error_kind=kind,
            page_count=len(state.expected),
        )
        self.docs_out.append(result)
        self.progress.document_finished()
        if state.error is not None:
            log.error("%s", state.error, extra={"file": state.doc.display, "kind": state.error.kind})
        for page in pages:
            if page.status != "ok":
                log.warning(
                    "%s page %d: %s%s",
                    state.doc.display,
                    page.page,
                    page.status,
                    f": {page.error}" if page.error else "",
                    extra={"file": state.doc.display, "page": page.page, "kind": page.status},
                )
        if self.config.fail_fast and not result.ok:
            self.stop = True
        assert self.run_info is not None
        image_dir = f"{state.rel.name}_images"
        if self.emit is not None:
            if self.single_stdout_doc:
                self.emit(render_markdown(result, page_separator=self.config.page_separator, image_dir=image_dir))
            else:
                self.emit(render_jsonl(result, self.run_info, image_dir=image_dir))
            return
        assert state.paths is not None
        markdown = (
            render_markdown(result, page_separator=self.config.page_separator, image_dir=image_dir)
            if "md" in self.config.formats
            else None
        )
        json_text = render_json(result, self.run_info, image_dir=image_dir) if "json" in self.config.formats else None
        figures = [f for page in pages for f in page.figures]
        manifest = files.manifest_for(
            state.digest,
            self.options,
            self.run_info.model,
            self.run_info.revision,
            [p.status for p in pages],
        )
        files.write_document(state.paths, markdown, json_text, figures, manifest)
        log.debug("wrote %s", state.paths.md if markdown is not None else state.paths.json)

    # -- pages ---------------------------------------------------------------------------------
    def _page_result(self, page: RenderedPage, output: "PageOutput") -> PageResult:
        markdown, boxes, figures = postprocess_page(output.raw_text, page.image, page.page)
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
        note = {
            "repetition": "no end-of-sequence before the token limit (repetition or runaway)",
            "timeout": "generation stopped at --page-timeout",
        }.get(output.status)
        return PageResult(
            page=page.page,
            status=output.status,  # type: ignore[arg-type]
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

    def _failed_page(self, page: RenderedPage, status: str, message: str) -> PageResult:
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

    def _run_pages(self, items: list[tuple[_DocState, RenderedPage]]) -> None:
        """Run a batch; on out-of-memory halve it down to one page, then mark the page failed."""
        assert self.engine is not None
        try:
            outputs = self.engine.run([page.image for _, page in items])
        except Exception as exc:  # noqa: BLE001 - the per-page boundary: record and go on
            recover = getattr(self.engine, "recover", None)
            if recover is not None:
                recover()
            if len(items) > 1:
                kind = "out of memory" if _is_oom(exc) else type(exc).__name__
                log.info("batch of %d pages failed (%s); retrying in smaller batches", len(items), kind)
                first, second = halves(items)
                self._run_pages(first)
                self._run_pages(second)
                return
            state, page = items[0]
            what = "CUDA out of memory" if _is_oom(exc) else f"{type(exc).__name__}: {exc}"
            log.debug("model error on %s page %d", state.doc.display, page.page, exc_info=True)
            state.results[page.page] = self._failed_page(page, "model_error", what)
            return
        for (state, page), output in zip(items, outputs):
            state.results[page.page] = self._page_result(page, output)

    # -- the run -------------------------------------------------------------------------------
    def execute(self, stdin: TextIO | None) -> RunOutcome:
        config = self.config
        started = time.perf_counter()
        docs, problems = expand_inputs(list(config.inputs), glob=config.glob, stdin=stdin)
        self.progress.start(len(docs) + len(problems))
        for problem in problems:
            self._fail_doc(problem.path, None, problem)
        self.single_stdout_doc = self.emit is not None and len(docs) == 1 and not problems

        from .runtime.loading import dtype_label, select_device, select_dtype

        dtype_name = dtype_label(select_dtype(config.model.dtype, select_device(config.model.device)))
        self.options = output_options(config, dtype_name)
        revision = expected_revision(config)
        layout = None
        if self.emit is None:
            files.check_writable(config.out)
            layout = files.OutputLayout(config.out)
        pending: list[_DocState] = []
        for doc in docs:
            rel = doc.rel
            if str(rel).lower() in _RESERVED_STEMS:
                rel = rel.with_name(rel.name + "_doc")
            paths = layout.paths_for(rel) if layout is not None else None
            # The input hash keys the resume manifest; with --stdout nothing is written or resumed.
            digest = files.file_sha256(doc.path) if paths is not None else ""
            if paths is not None and not config.force:
                key = files.manifest_key(digest, self.options, config.model.model, revision)
                done = files.is_done(paths, key, config.formats)
                if done and not (config.retry_failed and files.has_failed_pages(paths)):
                    self.skipped += 1
                    self.progress.document_finished()
                    log.debug("skipping %s: already done with the same options", doc.display)
                    continue
            pending.append(_DocState(doc=doc, rel=rel, digest=digest, paths=paths))
        if self.skipped:
            log.info("skipped %d document(s) already converted with the same options (use --force to redo)", self.skipped)

        interrupted = False
        if pending and not self.stop:
            interrupted = self._convert(pending)
        if self.run_info is None:
            self.run_info = describe_run(
                config,
                model=config.model.model,
                revision=revision,
                device=config.model.device,
                dtype=dtype_name,
                dummy=config.model.is_tiny_random,
            )
        # Documents that never finished (fail-fast or Ctrl-C) are not written and not counted as
        # done; a re-run converts them.
        summary = summarize(
            self.docs_out,
            skipped=self.skipped,
            wall_seconds=time.perf_counter() - started,
            interrupted=interrupted,
        )
        peak_gpu = getattr(self.engine, "peak_gpu_mb", lambda: None)() if self.engine is not None else None
        report = build_report(self.docs_out, summary, self.run_info, _peak_rss_mb(), peak_gpu)
        if self.emit is None:
            files.write_run_report(config.out, _json(report), pages_csv(self.docs_out))
        return RunOutcome(summary, self.docs_out, report, exit_code_for(summary), self.run_info)

    def _convert(self, pending: list[_DocState]) -> bool:
        """Stream, batch and run every pending document; True if interrupted by Ctrl-C."""
        factory = self.engine_factory or (lambda: build_engine(self.config))
        self.engine, self.run_info, self.batch_size = factory()
        by_index = dict(enumerate(pending))
        batch: list[tuple[_DocState, RenderedPage]] = []
        stream = PageStream(
            [s.doc for s in pending], self.config.raster, max_pages_in_flight=self.config.queue_pages
        )

        active: dict[int, _DocState] = {}

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

        try:
            with stream:
                for event in stream:
                    state = by_index[event.index]
                    active[event.index] = state
                    if isinstance(event, DocOpened):
                        state.opened = True
                        state.expected = list(event.page_numbers)
                        self.progress.pages_known(len(state.expected))
                    elif isinstance(event, PageRendered):
                        page = event.page
                        if page.error is not None or page.image is None:
                            message = str(page.error) if page.error is not None else "no image"
                            state.results[page.page] = self._failed_page(page, "render_error", message)
                            self.progress.pages_finished(1)
                        else:
                            batch.append((state, page))
                            if len(batch) >= self.batch_size:
                                flush()
                    elif isinstance(event, DocFailed):
                        state.error = event.error
                        state.rendered_all = True
                        queued = {p.page for s, p in batch if s is state}
                        for page_no in state.expected:
                            if page_no not in state.results and page_no not in queued:
                                missing = RenderedPage(page=page_no, image=None, render_ms=0.0)
                                state.results[page_no] = self._failed_page(
                                    missing, "render_error", str(event.error)
                                )
                    elif isinstance(event, DocDone):
                        state.rendered_all = True
                    finish_ready()
                    if self.stop:
                        break
                if not self.stop:
                    flush()
        except KeyboardInterrupt:
            log.error("interrupted: finished documents are written; re-run to convert the rest")
            return True
        finally:
            self.progress.close()
        return False


def _json(report: dict[str, Any]) -> str:
    import json

    return json.dumps(report, ensure_ascii=False, indent=2) + "\n"


def describe_run(
    config: RunConfig, *, model: str, revision: str | None, device: str, dtype: str, dummy: bool
) -> RunInfo:
    """What produced the outputs, for every JSON document and the report."""
    return RunInfo(
        model=model,
        revision=revision,
        mode=config.generation.mode,
        keep=keep_label(config.prune.keep),
        prune_method=config.prune.method,
        prompt=config.generation.prompt,
        device=device,
        dtype=dtype,
        dummy_model=dummy,
        version=__version__,
    )


def run_info_for(config: RunConfig, loaded: Any) -> RunInfo:
    """The run description once the model is loaded (its resolved device, dtype and revision)."""
    from .runtime.loading import dtype_label

    return describe_run(
        config,
        model=loaded.model_id,
        revision=loaded.revision,
        device=str(loaded.device),
        dtype=dtype_label(loaded.dtype),
        dummy=loaded.dummy,
    )


def build_engine(config: RunConfig) -> tuple[PageEngine, RunInfo, int]:
    """Load the model (imports torch) and pick the batch size."""
    from .runtime.engine import Engine
    from .runtime.loading import load_model

    loaded = load_model(config.model)
    if loaded.dummy:
        log.warning("using the tiny-random model: its text is meaningless (for tests and demos only)")
    engine = Engine(loaded, config.generation, config.prune)
    size = config.batch_size or auto_batch_size(
        loaded.device.type, config.generation.mode, engine.free_memory(), config.generation.max_new_tokens, loaded.dummy
    )
    info = run_info_for(config, loaded)
    log.info(
        "model %s on %s (%s), mode %s, keep %s, batch size %d",
        loaded.model_id, info.device, info.dtype, info.mode, info.keep, size,
    )
    return engine, info, size


def run(
    config: RunConfig,
    *,
    progress: ProgressSink | None = None,
    stdin: TextIO | None = None,
    emit: Callable[[str], None] | None = None,
    engine_factory: Callable[[], tuple[PageEngine, RunInfo, int]] | None = None,
) -> RunOutcome:
    """Convert every input of `config`; `emit` (for --stdout) receives documents instead of files."""
    return _Run(config, progress or NoProgress(), emit, engine_factory).execute(stdin)
