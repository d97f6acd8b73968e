"""`convert --ray`: the same conversion on a pool of Ray workers, one document per task.

Why this shape: a folder that outgrows one GPU should not need user-written sharding, and a run on
many machines must keep the batch contract of a local run. So the driver is a local `Run` that
keeps its planning (`Run.plan`: expand inputs, prepare and lock `--out`, hash inputs, skip what is
done) and its end (`Run.conclude`: account for every input, merge the run report), and fills in the
run's extension points: it joins the cluster in `before_output`, answers `resolve_dtype` as its
workers will, and replaces `convert_pending`: Ray Data streams the pending documents, largest
first, to an actor pool (one actor per GPU, each loading the model once); each actor converts
whole documents with `local.DocConverter`, which writes outputs, page checkpoints and
the manifest (last) into `--out` itself, atomically, as a local run does. `--out` must therefore be
a filesystem every worker sees. A worker returns a status row per document, never an exception;
one killed mid-document is restarted by Ray and the document redone from its checkpoints.

Ray is imported only here, and only for `--ray` (`ocrprune --help` imports neither Ray nor torch).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import json
import logging
import os
import pickle
import socket
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from ocrprune.config import RunConfig
from ocrprune.errors import DependencyError, DeviceError, OcrpruneError
from ocrprune.names import escape_name
from ocrprune.progress import ProgressSink
from ocrprune.records import DocResult, PageResult, RunInfo, page_from_record, page_to_record
from ocrprune.run.convert import EngineFactory
from ocrprune.run.document import DocState, PlannedDoc
from ocrprune.run.local import DocConverter, Run, RunOutcome, build_engine

log = logging.getLogger("ocrprune")

RAY_HINT = "pip install 'ocrprune[ray]' (ray[data,client] 2.60)"
# The columns of a worker's status row (one row per document).
ROW_COLUMNS = ("index", "result", "logs", "worker", "node", "pid", "cuda", "seconds", "run_info", "peak_gpu_mb", "fatal")


class RayClusterError(DependencyError):
    """The Ray cluster named by `--ray` cannot be reached or started (exit 5, environment)."""


def require_ray(address: str | None = None) -> None:
    """Fail at once, in one line, when `--ray` is given without Ray installed (exit 5), or
    `--ray ray://...` without Ray Client (grpcio), before `--out` is touched."""
    if importlib.util.find_spec("ray") is None:
        raise DependencyError(f"--ray needs Ray, which is not installed: {RAY_HINT}")
    if (address or "").startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise DependencyError(f"--ray {address} needs Ray Client, which is not installed: {RAY_HINT}")


# ---- joining the cluster: bounded, interruptible, quiet -------------------------------------------

# Ray's warnings about what ocrprune does on purpose: `ray.init` off the main thread, and Ray
# Data's progress bars off (ocrprune shows its own progress).
_ON_PURPOSE = (
    "SIGTERM handler is not set because current thread is not the main thread",
    "Progress bars disabled. To enable",
)
RAY_GCS_PORT, RAY_CLIENT_PORT = 6379, 10001


class _RayLogForwarder(logging.Handler):
    """Hands the records of Ray's Python loggers ("ray", "ray.data", ...) in this process to
    ocrprune's own handlers, so they come out as ocrprune lines (one JSON object each with
    `--log-format json`, above the progress bar otherwise), never in Ray's own format."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call in Ray must not stop the run
            message = str(record.msg)
        if message.startswith(_ON_PURPOSE):
            return
        copy = logging.makeLogRecord(record.__dict__)
        copy.msg, copy.args = f"ray: {message}", None
        setattr(copy, "fields", {"logger": record.name})  # a field of its own in JSON lines
        log.handle(copy)


def _owns_console() -> bool:
    """The CLI set up ocrprune's handlers (and does not propagate): it owns stderr."""
    return bool(log.handlers) and not log.propagate


def _console_is_json() -> bool:
    """`--log-format json`: every stderr line must be one JSON object."""
    from ocrprune.console import (
        JsonFormatter,  # stdlib and rich only; the CLI has loaded it already
    )

    return _owns_console() and any(isinstance(h.formatter, JsonFormatter) for h in log.handlers)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def route_ray_logs() -> bool:
    """Send Ray's Python loggers through ocrprune's handlers when ocrprune owns the console (the
    CLI set up its handlers and does not propagate); a library caller's logging is left alone.
    Ray's file handlers (its session logs) stay. Returns whether the logs are routed."""
    if not _owns_console():
        return False
    forwarder = _RayLogForwarder(logging.WARNING if log.getEffectiveLevel() >= logging.INFO else logging.INFO)
    names = ["ray"] + sorted(n for n in logging.Logger.manager.loggerDict if n.startswith("ray."))
    for name in names:
        logger = logging.getLogger(name)
        consoles = [h for h in logger.handlers if _is_console(h)]
        if name != "ray" and logger.propagate and not consoles:
            continue  # reaches "ray"'s forwarder
        for handler in consoles + [h for h in logger.handlers if isinstance(h, _RayLogForwarder)]:
            logger.removeHandler(handler)
        logger.addHandler(forwarder)
        logger.propagate = False
    return True


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """The host and TCP port `ray.init(address)` will dial (the GCS, or the Ray Client server for
    ray://), or None when Ray finds or starts the cluster itself (`auto`, a local instance)."""
    if not address or address == "auto":
        address = os.environ.get("RAY_ADDRESS") or None  # as ray.init does
    if not address or address in ("auto", "local"):
        return None
    default = RAY_GCS_PORT
    if address.startswith("ray://"):
        address, default = address[len("ray://"):].split("/", 1)[0], RAY_CLIENT_PORT
    host, colon, port = address.rpartition(":")
    if not colon or "]" in port:  # no port, or a bare IPv6 address in brackets
        host, port = address, str(default)
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


def _wait_for_port(endpoint: tuple[str, int], deadline: float) -> str | None:
    """Try a TCP connection until `deadline` (a cluster may still be starting): None once the port
    accepts one, else why not. Sleeps and connects in Python, so a signal stops it at once."""
    reason = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return reason
        try:
            with socket.create_connection(endpoint, timeout=min(remaining, 2.0)):
                return None
        except socket.gaierror as exc:
            return f"cannot resolve {endpoint[0]!r}: {exc.strerror or exc}"  # waiting will not help
        except OSError as exc:
            reason = (exc.strerror or str(exc) or type(exc).__name__).split("\n")[0]
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _one_line(exc: BaseException) -> str:
    text = escape_name(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def init_ray_within(address: str | None, timeout: float, *, own_console: bool) -> threading.Event:
    """`ray.init(address)` that gives up after `timeout` seconds with one `RayClusterError` line
    (exit 5), and that a signal interrupts at once. Returns the event that lets Ray's thread end:
    set it after `ray.shutdown()`.

    Why a thread: while `ray.init` waits for the cluster it sits in Ray's C++ code, where
    Python runs no signal handler (SIGTERM took 20 s and more to act on), and Ray has no one
    deadline for all its waits (GCS, Ray Client, a stale `auto`): the main thread waits instead. Off the
    main thread Ray also cannot replace ocrprune's SIGTERM handler with its own (which exited 15).
    A plain TCP probe first makes the common mistakes (nothing listening, a wrong host) quick
    and clear, and keeps Ray's C++ retry messages off the terminal."""
    started = time.monotonic()
    deadline = started + timeout
    where = address or os.environ.get("RAY_ADDRESS") or ""
    what = f"cannot reach the Ray cluster at {where}" if where else "cannot start a local Ray instance"
    endpoint = ray_endpoint(address)
    if endpoint is not None:
        reason = _wait_for_port(endpoint, deadline)
        if reason is not None:
            within = f" within {timeout:g} s" if time.monotonic() >= deadline else ""
            raise RayClusterError(f"{what}{within}: {reason}")
    env = _quiet_waits(timeout) if own_console and where else {}
    if _console_is_json() and "RAY_BACKEND_LOG_JSON" not in os.environ:
        env["RAY_BACKEND_LOG_JSON"] = "1"  # the driver's C++ core worker prints errors on stderr
    os.environ.update(env)
    import ray  # seconds on a busy machine: only once something answers

    route_ray_logs()
    init = _RayInit(ray, address, log_to_driver=not own_console)
    init.start()
    try:
        while not init.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
    except BaseException:
        _abandon(ray, init)  # interrupted: leave Ray's thread where it waits
        raise
    finally:
        if init.done.is_set():  # an abandoned connection may still log: keep it quiet
            for key in env:
                os.environ.pop(key, None)
    if not init.done.is_set():
        _abandon(ray, init)
        reason = "no answer" if where else "it did not come up"
        if endpoint is not None:
            reason = f"{endpoint[0]}:{endpoint[1]} accepts connections but no Ray cluster answered there"
        raise RayClusterError(f"{what} within {timeout:g} s: {reason}")
    if init.error is not None:
        raise RayClusterError(f"{what}: {_one_line(init.error)}")
    log.debug("ray: connected in %.1f s", time.monotonic() - started)
    return init.release


def _quiet_waits(timeout: float) -> dict[str, str]:
    """Ray's C++ GCS client prints "Failed to connect to GCS ... within 5 seconds" (and more)
    on stderr whenever one of its waits runs out, before Ray's logging is set up (so
    RAY_BACKEND_LOG_LEVEL does not reach it). With its waits longer than ocrprune's own deadline
    it never gets to say it: ocrprune says it, once, in its own format. Ray reads these when its
    C++ config is first built, in the connecting thread; settings the user made are kept."""
    wait = str(int(timeout) + 60)
    names = ("RAY_gcs_rpc_server_connect_timeout_s", "RAY_py_gcs_connect_timeout_s")
    return {name: wait for name in names if name not in os.environ}


class _RayInit(threading.Thread):
    """Calls `ray.init`, then stays alive until released. It must: Ray starts a local instance's
    GCS and raylet with PR_SET_PDEATHSIG, which Linux fires when the *thread* that started them
    ends, not the process (they died a second after `ray.init` returned)."""

    def __init__(self, ray: Any, address: str | None, *, log_to_driver: bool) -> None:
        super().__init__(name="ocrprune-ray", daemon=True)
        self.ray, self.address, self.log_to_driver = ray, address, log_to_driver
        self.done, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            level = logging.WARNING if log.getEffectiveLevel() >= logging.INFO else logging.INFO
            # log_to_driver=False (ocrprune's console): workers' own stdout/stderr stay in Ray's
            # session logs (what a worker has to say comes back in its status rows).
            self.ray.init(address=self.address, logging_level=level, log_to_driver=self.log_to_driver)
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread, in one line
            self.error = exc
        finally:
            self.done.set()
        if self.error is None:
            self.release.wait()


def _abandon(ray: Any, init: _RayInit) -> None:
    """Ray's exit hook would wait for the half-made connection the thread still holds: drop it
    (the process is about to end; a local Ray's reaper stops what it started)."""
    if not init.done.is_set():
        atexit.unregister(ray.shutdown)


# ---- status rows: what crosses from a worker to the driver -------------------------------------


def result_to_record(result: DocResult) -> dict[str, Any]:
    """A document's outcome as plain JSON values: statuses, tokens and timings, no text (the
    worker already wrote the text; the driver needs only what the run report counts)."""
    return {
        "source": result.source,
        "stem": result.stem,
        "pages": [page_to_record(p, full=False) for p in result.pages],
        "error": result.error,
        "error_kind": result.error_kind,
        "page_count": result.page_count,
        "skipped": result.skipped,
    }


def result_from_record(record: dict[str, Any]) -> DocResult:
    """The inverse of `result_to_record`."""
    pages: tuple[PageResult, ...] = tuple(page_from_record(p) for p in record["pages"])
    return DocResult(
        source=record["source"],
        stem=record["stem"],
        pages=pages,
        error=record["error"],
        error_kind=record["error_kind"],
        page_count=int(record["page_count"]),
        skipped=bool(record["skipped"]),
    )


class _LogCapture(logging.Handler):
    """Collects a worker's log records so the driver prints them on its console (once)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[list[Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not cost a document
            message = str(record.msg)
        extra = {k: getattr(record, k) for k in ("file", "page", "kind") if hasattr(record, k)}
        self.records.append([record.levelno, message, extra])

    def drain(self) -> list[list[Any]]:
        records, self.records = self.records, []
        return records


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - anything that does not round-trip is sent as text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class DocWorker:
    """A Ray Data actor: loads the engine once, then converts one document per row.

    A model that will not load does not raise here (Ray would only report a dead actor): the error
    goes back in the `fatal` column of every row and the driver raises it (exit 5 as locally)."""

    def __init__(self, config: RunConfig, engine_factory: EngineFactory | None = None) -> None:
        import ray

        self.capture = _LogCapture()
        logger = logging.getLogger("ocrprune")
        logger.handlers[:] = [self.capture]
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the driver prints these; Ray would forward stderr a second time
        self.pid = os.getpid()
        self.node = ray.util.get_node_ip_address()
        self.worker = f"{self.node}:{self.pid}"
        self.cuda = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.fatal = b""
        self.converter: DocConverter | None = None
        try:
            engine, info, size = (engine_factory or (lambda: build_engine(config)))()
            self.converter = DocConverter(config, engine, info, size)
            self.info_json = json.dumps(asdict(info))
        except Exception as exc:  # noqa: BLE001 - sent to the driver, which raises it
            self.fatal = pickle.dumps(_picklable(exc))
            self.info_json = ""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [self.convert(int(i), bytes(t)) for i, t in zip(batch["index"], batch["task"])]
        return {column: [row[column] for row in rows] for column in ROW_COLUMNS}

    def convert(self, index: int, task: bytes) -> dict[str, Any]:
        """One status row for one document; never raises for the document."""
        started = time.perf_counter()
        result_json = ""
        if self.converter is not None:
            result = self.converter.convert(pickle.loads(task))
            result_json = json.dumps(result_to_record(result))
        peak = self.converter.engine.peak_gpu_mb() if self.converter is not None else None
        return {
            "index": index,
            "result": result_json,
            "logs": json.dumps(self.capture.drain()),
            "worker": self.worker,
            "node": self.node,
            "pid": self.pid,
            "cuda": self.cuda,
            "seconds": time.perf_counter() - started,
            "run_info": self.info_json,
            "peak_gpu_mb": -1.0 if peak is None else float(peak),
            "fatal": self.fatal,
        }


# ---- the driver ---------------------------------------------------------------------------------


class _RayRun(Run):
    """A local run whose `convert_pending` hands the pending documents to Ray workers."""

    def __init__(self, config: RunConfig, progress: ProgressSink, engine_factory: EngineFactory | None) -> None:
        super().__init__(config, progress, None, engine_factory)
        self.actors = 0
        self.gpus_per_actor = 0
        self.connected = False
        self.workers: dict[str, dict[str, Any]] = {}
        self.peak_gpu: float | None = None

    def _connect(self) -> None:
        """Start or join Ray (once) and decide the pool: one actor per GPU."""
        if self.connected:
            return
        started_here = False
        loaded = sys.modules.get("ray")  # importing Ray takes seconds: not before the address answers
        if loaded is None or not loaded.is_initialized():
            address = self.config.ray or None
            release = init_ray_within(address, self.config.ray_timeout, own_console=_owns_console())
            self.stack.callback(release.set)
            import ray
            import ray.data  # noqa: F401 - sets up its own console logging on import

            self.stack.callback(ray.shutdown)  # first (callbacks run last in, first out)
            route_ray_logs()  # also the loggers Ray made while connecting
            started_here = not address and not os.environ.get("RAY_ADDRESS")
        import ray

        self.connected = True
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.config.gpus is not None:
            self.actors, self.gpus_per_actor = self.config.gpus, 1
            if started_here and self.config.gpus > cluster_gpus:
                # No autoscaler will add GPUs to a Ray started here: waiting would hang the run.
                raise DeviceError(f"--gpus {self.config.gpus}: this machine has {cluster_gpus} GPU(s) for Ray")
            if self.config.gpus > cluster_gpus:
                log.warning("--gpus %d but the Ray cluster has %d GPU(s) now: workers wait for GPUs", self.config.gpus, cluster_gpus)
        elif cluster_gpus:
            self.actors, self.gpus_per_actor = cluster_gpus, 1
        else:
            self.actors, self.gpus_per_actor = 1, 0
            log.warning("the Ray cluster has no GPUs: converting with one CPU worker (--gpus N asks for N GPU workers)")

    def before_output(self) -> None:
        """Join the cluster before `--out` is prepared and locked: a wrong address or a cluster
        that does not answer fails (exit 5) without having created or locked anything."""
        self._connect()

    def resolve_dtype(self) -> str:
        """As the workers will resolve it (they hold the GPUs, the driver may not): no torch here."""
        self._connect()
        model = self.config.model
        if model.dtype != "auto":
            return model.dtype
        if model.device == "cpu" or (model.device == "auto" and not self.gpus_per_actor):
            return "fp32"
        return "bf16"

    def _worker_config(self) -> RunConfig:
        # Workers run elsewhere (another cwd, another machine): paths absolute, no inputs to expand.
        return dataclasses.replace(self.config, inputs=(), out=Path(os.path.abspath(self.config.out)), ray=None, gpus=None)

    def convert_pending(self, pending: list[DocState]) -> None:
        """Convert on the Ray workers, one document per task; every pending document ends
        recorded (a failure row when none came back)."""
        from ray import data

        self._connect()
        context = data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's own progress is shown instead
        context.execution_options.preserve_order = False
        order = sorted(range(len(pending)), key=lambda i: (-_size(pending[i]), i))  # largest first
        items = [
            {"index": i, "task": pickle.dumps(PlannedDoc(pending[i].doc, pending[i].rel, pending[i].digest, pending[i].key))}
            for i in order
        ]
        actors = max(1, min(self.actors, len(pending)))
        log.info(
            "ray: %d document(s) to convert on %d worker(s)%s",
            len(pending), actors, " with one GPU each" if self.gpus_per_actor else " (CPU)",
        )
        dataset = data.from_items(items, override_num_blocks=len(items)).map_batches(
            DocWorker,
            fn_constructor_kwargs={"config": self._worker_config(), "engine_factory": self.engine_factory},
            batch_size=1,
            compute=data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_gpus=self.gpus_per_actor,
            # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a killed
            # worker is restarted and its document redone (from its page checkpoints). Passing
            # them here is deprecated in 2.60; tests/test_ray.py pins the behaviour.
        )
        received: set[int] = set()
        started = time.perf_counter()
        try:
            for row in dataset.iter_rows():
                if row["fatal"]:
                    raise pickle.loads(row["fatal"])
                self._take(row, pending, received, started)
                if self.state.stop:
                    break
        except OcrpruneError:
            raise
        except Exception as exc:  # noqa: BLE001 - the job failed: what is missing is reported below
            log.error("the Ray job failed: %s: %s", type(exc).__name__, escape_name(str(exc)).splitlines()[0] if str(exc) else "")
            log.debug("Ray job failure", exc_info=True)
        self.progress.all_pages_known()
        if self.state.stop:
            return
        for position, state in enumerate(pending):
            if position not in received:  # never lose a document: a failure row instead
                log.error("%s: internal: no result came back from the Ray workers", state.shown, extra={"file": state.shown, "kind": "internal"})
                self.record(DocResult(source=state.shown, stem=state.rel.name, error="no result came back from the Ray workers", error_kind="internal"))

    def _take(self, row: dict[str, Any], pending: list[DocState], received: set[int], started: float) -> None:
        """Record one worker's status row: its logs, the document, the worker's counts, progress."""
        index = int(row["index"])
        for level, message, extra in json.loads(row["logs"]):
            log.log(int(level), "%s", message, extra=extra)
        if index in received:  # a retried task that delivered twice: the outputs exist once anyway
            return
        received.add(index)
        result = result_from_record(json.loads(row["result"]))
        if self.state.run_info is None and row["run_info"]:
            self.state.run_info = RunInfo(**json.loads(row["run_info"]))
        if row["peak_gpu_mb"] >= 0:
            self.peak_gpu = max(self.peak_gpu or 0.0, float(row["peak_gpu_mb"]))
        worker = self.workers.setdefault(
            row["worker"],
            {"worker": row["worker"], "node": row["node"], "pid": int(row["pid"]), "cuda_visible_devices": row["cuda"],
             "documents": 0, "documents_failed": 0, "pages": 0, "busy_seconds": 0.0},
        )
        worker["documents"] += 1
        worker["documents_failed"] += 0 if result.ok else 1
        worker["pages"] += len(result.pages)
        worker["busy_seconds"] = round(worker["busy_seconds"] + float(row["seconds"]), 3)
        self.progress.pages_known(len(result.pages))
        self.progress.pages_finished(len(result.pages))
        self.record_converted(result)  # with --fail-fast, a failed document stops the run
        pages = sum(w["pages"] for w in self.workers.values())
        elapsed = time.perf_counter() - started
        log.info(
            "ray: %d/%d documents done, %d pages, %.2f pages/s (%s: %d page(s) on %s)",
            len(received), len(pending), pages, pages / elapsed if elapsed > 0 else 0.0,
            pending[index].shown, len(result.pages), row["worker"],
        )

    def peak_gpu_mb(self) -> float | None:
        """The most any worker reported."""
        return self.peak_gpu

    def report_extra(self) -> dict[str, Any]:
        """The per-worker counts."""
        return {"workers": [self.workers[k] for k in sorted(self.workers)]}


def _size(state: DocState) -> int:
    try:
        return os.stat(state.doc.path).st_size
    except OSError:
        return 0


def run_on_ray(
    config: RunConfig,
    *,
    progress: ProgressSink,
    stdin: TextIO | None = None,
    engine_factory: EngineFactory | None = None,
) -> RunOutcome:
    """`ocrprune.run.run` on Ray: the same outputs, report and exit code as a local run.
    `engine_factory` (picklable) is called once in each worker instead of loading the model."""
    require_ray(config.ray)
    return _RayRun(config, progress, engine_factory).execute(stdin)


__all__ = [
    "DocWorker", "RayClusterError", "init_ray_within", "ray_endpoint", "require_ray", "result_from_record",
    "result_to_record", "route_ray_logs", "run_on_ray",
]
