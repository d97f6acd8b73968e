"""ocrprune: batch OCR with DeepSeek-OCR and RTPrune visual-token pruning.

The package reads as its stages, in the order a page goes through them:

    cli.py        the `ocrprune` command: flags -> one RunConfig (config.py) -> run.run(); thin
    inputs.py     paths, folders, globs, @lists and stdin -> Documents with their output names
    raster/       a Document -> page images, lazily, in a render process (open: which renderer;
                  mupdf, pdfium, images: the renderers; stream: PageStream and its events;
                  worker: the render process; base: what every renderer shares)
    runtime/      page images -> PageOutputs. api: the contract (Backend, EncodingBackend,
                  PageOutput, LoadedInfo, describe_run); __init__: open_backend, the one factory;
                  hf/: the transformers engine (the numerics reference); vllm/: vLLM decoding
    rtprune.py    the pruning maths: pure tensor functions that import torch and nothing else
    models/       one spec per model family (stdlib only): modes, layouts, checkpoint names
    postprocess/  raw model text -> Markdown, boxes and figures; loops tells a loop from a long page
    run/          the batch: local.Run (plan -> convert_pending -> conclude), plan, resume,
                  document (a document in flight), convert (pages through the engine),
                  driver (the one stream -> batch -> backend loop), batching (run_split),
                  signals, distributed (the same run on Ray workers)
    writers/      files (atomic, link-safe writes under --out), document (one document's files and
                  manifest), markdown, json; no torch
    report.py     the run report and exit code; records.py the plain records every stage passes on
    sweep/        `ocrprune sweep`: the same pages at several keeps (run), fidelity, report

Seams, and where new things go:
- A new engine: one module under runtime/ implementing `runtime.api.Backend` (and
  `EncodingBackend` for sweep), plus one branch in `runtime.open_backend`. Engines import the
  contract, never the factory; nothing outside runtime/ imports an engine.
- A new model family: one spec in models/ (stdlib only); the runtime reads it.
- A new renderer: one module in raster/ returning an `OpenedDocument`, plus one line in
  `raster.open.open_document` (and `check_renderer` if it is an optional extra).
- A new output format: a renderer in writers/ (no torch), listed where `writers.document` renders
  a document's files, so the manifest, resume and stale-output removal cover it.
- A new runner (a cluster, a queue): extend `run.local.Run` through its public extension points
  (`plan`, `before_output`, `resolve_dtype`, `convert_pending`, `report_extra`, `peak_gpu_mb`,
  `conclude`), as run/distributed.py does, and convert each document with `Run.convert_document`.

`tests/test_house.py` keeps it this way: it reads the imports with `ast` and fails on an import
cycle, a private name used across modules, or an engine reached from outside runtime/.
`ocrprune --help` imports no torch: only runtime/ and rtprune import it, and only when a page runs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    # One source of truth: the version in pyproject.toml, as the installed package records it.
    __version__ = version("ocrprune")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
