"""`convert --ray` (#12): the same outputs as a local run, one document per Ray task, status rows
instead of exceptions, and the faults a cluster brings (a worker killed mid-document, the driver
killed and re-run). Ray starts once per module with logical CPUs and two fake GPUs; the slow fault
tests are marked `slow`."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest
from docgen import make_pdf
from typer.testing import CliRunner

import ocrprune.run as runner
from ocrprune.cli import app
from ocrprune.config import GenerationSettings, ModelConfig, PruneConfig, RunConfig
from ocrprune.errors import InputError, ModelLoadError
from ocrprune.inputs import Document
from ocrprune.records import DocResult, KeepInfo, PageResult, RunInfo, Timings, TokenCounts
from ocrprune.run.document import PlannedDoc
from ocrprune.run.local import DocConverter
from ocrprune.runtime.api import BackendBase
from ocrprune.writers import files

REPO = Path(__file__).resolve().parents[2]
SRC = str(REPO / "src")
TINY = ["--model", "tiny-random", "--device", "cpu", "--mode", "tiny", "--max-new-tokens", "8"]
INFO = RunInfo(model="scripted", revision=None, mode="tiny", keep="1", prune_method="rtprune",
               prompt="p", device="cpu", dtype="fp32", dummy_model=True)


# ---- test documents and a scripted engine (self-contained: Ray ships this module by value) ----


def doc_pdf(path: Path, doc_id: int, pages: int) -> Path:
    """A PDF whose pages say which document and page they are: page n of document d is
    (100 + d) x (100 + n) points, so at 144 dpi (200 + 2d) x (200 + 2n) pixels."""
    import pymupdf

    doc = pymupdf.open()
    for n in range(1, pages + 1):
        doc.new_page(width=100 + doc_id, height=100 + n).insert_text((10, 30), f"{doc_id}/{n}", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(str(path))
    doc.close()
    return path


def which(image) -> tuple[int, int]:
    """(document id, page) of a `doc_pdf` page image."""
    width, height = image.size
    return round(width / 2) - 100, round(height / 2) - 100


class PageEngine(BackendBase):
    """Text that names the page; `fail_doc` raises for that document's pages; `kill_doc`/`kill_page`
    SIGKILLs its own process once (a marker file remembers) when asked for that page. Every
    page asked for is appended to `ledger` as `pid doc page`."""

    def __init__(self, ledger: str, fail_doc: int | None = None, kill_doc: int | None = None, kill_page: int = 0,
                 marker: str = "", delay: float = 0.0) -> None:
        self.ledger, self.fail_doc, self.kill_doc, self.kill_page = ledger, fail_doc, kill_doc, kill_page
        self.marker, self.delay = marker, delay

    def run(self, images):
        from ocrprune.runtime.api import PageOutput

        outputs = []
        for image in images:
            doc, page = which(image)
            with open(self.ledger, "a") as ledger:
                ledger.write(f"{os.getpid()} {doc} {page}\n")
            if doc == self.kill_doc and page == self.kill_page and not os.path.exists(self.marker):
                Path(self.marker).write_text("killed once\n")
                os.kill(os.getpid(), signal.SIGKILL)
            if doc == self.fail_doc:
                raise RuntimeError(f"injected failure on document {doc}")
            time.sleep(self.delay)
            outputs.append(
                PageOutput(raw_text=f"document {doc} page {page}", status="ok", token_ids=[5, 1],
                           tokens=TokenCounts(visual_total=64, visual_kept=32, prompt_unpruned=80, prompt=48, generated=2),
                           keep=KeepInfo(setting="1", ratio=0.5), preprocess_ms=1.0, encode_ms=2.0, prune_ms=0.5,
                           prefill_ms=3.0, decode_ms=4.0)
            )
        return outputs


class Factory:
    """A picklable engine factory: what each Ray worker calls once instead of loading a model."""

    def __init__(self, **engine) -> None:
        self.engine = engine

    def __call__(self):
        return PageEngine(**self.engine), INFO, 1


def config_for(tmp_path: Path, inputs, *, out: Path, ray: str | None = "", gpus: int | None = 2, tiny=False) -> RunConfig:
    return RunConfig(
        inputs=tuple(str(p) for p in inputs),
        out=out,
        model=ModelConfig(model="tiny-random", device="cpu"),
        prune=PruneConfig(keep="auto" if tiny else 1.0),
        generation=GenerationSettings(mode="tiny", max_new_tokens=8),
        base=tmp_path,
        ray=ray,
        gpus=gpus,
    )


def ledger_pages(ledger: Path) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in line.split()) for line in ledger.read_text().splitlines()]  # type: ignore[misc]


def tree(out: Path) -> dict[str, object]:
    """Every file under `out` but the run reports and the lock, JSON without timings (manifests
    also without the JSON file's stamp, which hashes the timings). The `auto` keep measures
    (`ratio`, `r_txt`, `r_sim`) are compared to 5 decimals: Ray gives each actor one CPU thread
    (OMP_NUM_THREADS=1) where a local run uses every core, and fp32 sums taken in another order
    differ in the 7th digit; the kept token counts, the text and everything else stay exact."""

    def strip(value, key=None):
        if key == "keep" and isinstance(value, dict):
            return {k: round(v, 5) if isinstance(v, float) else v for k, v in value.items()}
        if isinstance(value, dict):
            return {k: strip(v, k) for k, v in value.items() if k not in ("timings", "timings_ms")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel in ("report.json", "pages.csv", ".ocrprune/lock") or rel.startswith(".ocrprune/runs/"):
            continue
        if path.suffix == ".json":
            data = strip(json.loads(path.read_text(encoding="utf-8")))
            if rel.endswith(".manifest.json"):
                data["outputs"] = {k: v for k, v in data["outputs"].items() if not k.endswith(".json")}
            found[rel] = data
        else:
            found[rel] = path.read_bytes()
    return found


# ---- without Ray running ------------------------------------------------------------------------


def test_errors_and_document_rows_survive_the_trip_from_a_worker():
    error = InputError("scans/a\nb.pdf", "corrupt", "bad xref", page=3)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), back.path, back.kind, back.detail, back.page, str(back)) == (
        InputError, "scans/a\nb.pdf", "corrupt", "bad xref", 3, "scans/a\\nb.pdf page 3: corrupt: bad xref")
    from ocrprune.run.distributed import result_from_record, result_to_record

    page = PageResult(page=2, status="length", markdown="text", raw_text="raw", tokens=TokenCounts(generated=7),
                      timings=Timings(decode=4.5, total=9.0), keep=KeepInfo(ratio=0.25), width=10, height=20, error="cut")
    result = DocResult(source="a.pdf", stem="a.pdf", pages=(page,), page_count=1)
    back_result = result_from_record(json.loads(json.dumps(result_to_record(result))))
    # Text stays with the worker (it wrote it); statuses, tokens, timings and errors come back.
    assert back_result == DocResult(source="a.pdf", stem="a.pdf", page_count=1,
                                    pages=(PageResult(page=2, status="length", tokens=TokenCounts(generated=7),
                                                      timings=Timings(decode=4.5, total=9.0), keep=KeepInfo(ratio=0.25),
                                                      width=10, height=20, error="cut"),))


def test_ray_missing_is_one_line_and_exit_5(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # find_spec("ray") is None: not installed
    doc = make_pdf(tmp_path / "a.pdf")
    result = CliRunner().invoke(app, ["convert", str(doc), "--out", str(tmp_path / "out"), *TINY, "--ray"])
    assert result.exit_code == 5
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["ocrprune: --ray needs Ray, which is not installed: pip install 'ocrprune[ray]' (ray[data,client] 2.60)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "ray", "gpus"),
    [(["--ray"], "", None), (["--ray", "-q"], "", None), (["--ray", "auto", "--gpus", "3"], "auto", 3),
     (["--ray=ray://head:10001"], "ray://head:10001", None), (["--ray", "10.0.0.5:6379"], "10.0.0.5:6379", None)],
)
def test_ray_flag_takes_an_optional_address(args, ray, gpus, monkeypatch):
    from ocrprune import cli

    seen: list[RunConfig] = []
    monkeypatch.setattr(cli, "_run_convert", lambda config, quiet, fmt: seen.append(config) or 0)
    result = CliRunner().invoke(app, ["convert", "a.pdf", *args])
    assert result.exit_code == 0, result.output
    assert (seen[0].ray, seen[0].gpus) == (ray, gpus)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--ray", "docs/"], "'docs/' is not a Ray address"), (["--gpus", "2"], "it applies to --ray runs"),
     (["--ray", "--stdout"], "cannot write to stdout")],
)
def test_ray_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(app, ["convert", "a.pdf", *args])
    assert result.exit_code == 2
    assert message in result.output


# ---- reaching the cluster: bounded, interruptible, before --out (#15) --------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SilentListener:
    """A TCP port that accepts connections and never says a word (a port that is not Ray's)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted: list[object] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.accepted.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()  # type: ignore[attr-defined]


@pytest.fixture()
def silent_port():
    listener = SilentListener()
    yield listener
    listener.close()


def convert_command(tmp_path: Path, *args: str) -> list[str]:
    png = tmp_path / "a.png"
    if not png.exists():
        from PIL import Image

        Image.new("RGB", (64, 64), "white").save(png)
    return [sys.executable, "-m", "ocrprune", "convert", str(png), "--out", str(tmp_path / "out"), *TINY, *args]


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_fails_after_the_timeout_in_one_line_and_never_creates_out(tmp_path, scheme):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    address = f"{scheme}127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(convert_command(tmp_path, f"--ray={address}", "--ray-timeout", "1"), env=cli_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 5, done.stderr
    assert done.stderr.splitlines() == [f"ocrprune: cannot reach the Ray cluster at {address} within 1 s: Connection refused"]
    assert done.stdout == ""
    assert 1.0 <= elapsed < 30.0  # the bound, not Ray's own 20 retries of 40 s (or "requires ray[client]")
    assert not (tmp_path / "out").exists()  # never created, never locked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_port_that_is_not_ray_times_out_with_exit_5_and_every_stderr_line_json(tmp_path, silent_port, scheme):
    """Ray's own waits there print "Failed to connect to GCS ... within 5 seconds" from C++ after
    5 s: with a 6 s bound ocrprune's one JSON line must be all of stderr."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    address = f"{scheme}127.0.0.1:{silent_port.port}"
    done = subprocess.run(convert_command(tmp_path, f"--ray={address}", "--ray-timeout", "6", "--log-format", "json"),
                          env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 5, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line one JSON object
    assert [(line["level"], line["message"]) for line in lines] == [
        ("error", f"cannot reach the Ray cluster at {address} within 6 s: "
                  f"127.0.0.1:{silent_port.port} accepts connections but no Ray cluster answered there")]
    assert silent_port.accepted  # it was asked
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_connecting_stops_the_run_at_once_with_128_plus_the_signal(tmp_path, silent_port, signum, code):
    """A signal while `ray.init` waits in Ray's C++ code for a port that never answers ends the
    run within seconds, with the interrupted line and no traceback, and `--out` untouched (it took
    20 s or more, and exit 15). The listener's first connection is ocrprune's probe, so the run has
    its signal handlers by then; a few seconds more and it is past `import ray`, inside `ray.init`."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    driver = subprocess.Popen(convert_command(tmp_path, f"--ray=127.0.0.1:{silent_port.port}", "--ray-timeout", "300"),
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not silent_port.accepted and time.monotonic() < deadline:
        assert driver.poll() is None
        time.sleep(0.1)
    time.sleep(4.0)
    assert driver.poll() is None
    driver.send_signal(signum)
    sent = time.monotonic()
    stdout, stderr = driver.communicate(timeout=120)
    assert time.monotonic() - sent < 8.0  # about 1 s on an idle machine
    assert driver.returncode == code, stderr
    name = signal.Signals(signum).name
    assert stderr.splitlines()[0] == f"ocrprune: interrupted ({name}): finished documents and pages are kept; re-run to convert the rest"
    assert "Traceback" not in stderr and stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "env", "seconds"),
                         [([], {}, 30.0), (["--ray-timeout", "2.5"], {}, 2.5), ([], {"OCRPRUNE_RAY_TIMEOUT": "7"}, 7.0)])
def test_the_ray_timeout_is_30_s_unless_the_option_or_the_environment_says(args, env, seconds, monkeypatch):
    from ocrprune import cli

    seen: list[RunConfig] = []
    monkeypatch.setattr(cli, "_run_convert", lambda config, quiet, fmt: seen.append(config) or 0)
    monkeypatch.delenv("OCRPRUNE_RAY_TIMEOUT", raising=False)
    result = CliRunner().invoke(app, ["convert", "a.pdf", *args, "--ray=10.0.0.5:6379"], env=env)
    assert result.exit_code == 0, result.output
    assert seen[0].ray_timeout == seconds
    assert CliRunner().invoke(app, ["convert", "a.pdf", "--ray-timeout", "0", "--ray"]).exit_code == 2


def test_ray_client_addresses_need_ray_client_which_the_extra_installs(tmp_path, monkeypatch):
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert extra == ["ray[data,client]==2.60.*"]
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    monkeypatch.setitem(sys.modules, "grpc", None)  # Ray without Ray Client
    doc = make_pdf(tmp_path / "a.pdf")
    result = CliRunner().invoke(app, ["convert", str(doc), "--out", str(tmp_path / "out"), *TINY, "--ray=ray://head:10001"])
    assert result.exit_code == 5
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "ocrprune: --ray ray://head:10001 needs Ray Client, which is not installed: "
        "pip install 'ocrprune[ray]' (ray[data,client] 2.60)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("address", "environ", "endpoint"),
    [("10.0.0.5:6379", None, ("10.0.0.5", 6379)), ("ray://head", None, ("head", 10001)),
     ("ray://head:10002", None, ("head", 10002)), ("[::1]:6380", None, ("::1", 6380)), ("auto", None, None),
     (None, None, None), (None, "h:7000", ("h", 7000)), ("auto", "ray://h:7001", ("h", 7001))],
)
def test_the_probe_dials_what_ray_init_will_dial(address, environ, endpoint, monkeypatch):
    from ocrprune.run.distributed import ray_endpoint

    if environ is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", environ)
    assert ray_endpoint(address) == endpoint


def test_rays_python_log_records_come_out_as_ocrprune_lines(monkeypatch):
    """With `--log-format json`, a record of any Ray logger (Ray Data sets up its own console
    handler) is one ocrprune JSON line; Ray's INFO chatter and its off-main-thread warning are not."""
    import io
    import logging

    from ocrprune.console import setup_logging
    from ocrprune.run.distributed import route_ray_logs

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate, logging.getLogger(name).level)
             for name in ("ocrprune", "ray", "ray.data")}
    ray_data_console = io.StringIO()
    logging.getLogger("ray.data").handlers[:] = [logging.StreamHandler(ray_data_console)]
    logging.getLogger("ray.data").propagate = False
    stream = io.StringIO()
    try:
        setup_logging(0, "json", stream=stream)
        assert route_ray_logs()
        logging.getLogger("ray.data._internal.execution").warning("slow %s", "task")
        logging.getLogger("ray").setLevel(logging.DEBUG)
        logging.getLogger("ray._private.worker").info("Connecting to existing Ray cluster")
        logging.getLogger("ray._private.worker").warning(
            "SIGTERM handler is not set because current thread is not the main thread.")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [{k: v for k, v in line.items() if k != "time"} for line in lines] == [
            {"level": "warning", "message": "ray: slow task", "logger": "ray.data._internal.execution"}]
        assert ray_data_console.getvalue() == ""
    finally:
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)


def test_a_library_callers_logging_of_ray_is_left_alone(monkeypatch):
    import logging

    from ocrprune.run.distributed import route_ray_logs

    owner = logging.getLogger("ocrprune")
    monkeypatch.setattr(owner, "handlers", [])
    monkeypatch.setattr(owner, "propagate", True)
    before = logging.getLogger("ray").handlers[:]
    assert not route_ray_logs()
    assert logging.getLogger("ray").handlers == before


def test_a_worker_never_raises_for_a_document(tmp_path):
    """Anything unexpected while converting a planned document is a failed row (`internal`)."""
    ledger = tmp_path / "ledger"
    pdf = doc_pdf(tmp_path / "a.pdf", 1, 1)
    config = config_for(tmp_path, [], out=tmp_path / "out", ray=None, gpus=None)
    converter = DocConverter(config, PageEngine(str(ledger)), INFO, 1)
    doc = Document(path=pdf, display="a.pdf", rel=PurePosixPath("a.pdf"), kind="pdf")
    bad = converter.convert(PlannedDoc(doc, PurePosixPath("../escape.pdf"), "0" * 64, {}))
    assert (bad.error_kind, bad.source, bad.pages) == ("internal", "a.pdf", ())
    assert bad.error.startswith("worker failed: OutputError: refusing output path '../escape.pdf'")
    digest = files.file_sha256(pdf)
    key = files.manifest_key(digest, converter.options, "tiny-random", converter.revision)
    good = converter.convert(PlannedDoc(doc, PurePosixPath("a.pdf"), digest, key))
    assert [(p.page, p.status) for p in good.pages] == [(1, "ok")]
    assert (tmp_path / "out" / "a.pdf.md").read_text() == "document 1 page 1\n"
    assert files.is_done(files.OutputLayout(tmp_path / "out").paths_for("a.pdf"), key, ("json", "md"))
    assert not (tmp_path / "escape.pdf.md").exists()


def test_a_model_that_will_not_load_comes_back_as_the_error_itself(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    from ocrprune.run.distributed import DocWorker

    def refuse():
        raise ModelLoadError("no weights in /models/x")

    worker = DocWorker(config_for(tmp_path, [], out=tmp_path / "out", ray=None, gpus=None), refuse)
    row = worker.convert(0, b"")
    error = pickle.loads(row["fatal"])
    assert (type(error), str(error), row["result"]) == (ModelLoadError, "no weights in /models/x", "")


# ---- on Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 8 logical CPUs (the machine has 2 cores: the read task and the actor pool
    must not starve each other) and 2 fake GPUs; workers import this checkout's sources."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ocrprune[ray]')")
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([SRC, str(REPO / "tests")] + ([saved] if saved else []))
    ray.init(num_cpus=8, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def small_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    make_pdf(folder / "two.pdf", pages=2)
    make_pdf(folder / "one.pdf", pages=1, text="a single page")
    make_pdf(folder / "sub" / "three.pdf", pages=3, size=(300.0, 400.0))
    from conftest import draw_page

    draw_page(size=(300, 420), seed=4).save(folder / "scan.png")
    return folder


@pytest.mark.slow  # a local Ray cluster; fast: test_a_worker_never_raises_for_a_document (the per-document unit)
def test_ray_writes_what_a_local_run_writes_and_each_worker_has_its_own_gpu(tmp_path, ray_cluster):
    folder = small_folder(tmp_path)
    local = runner.run(config_for(tmp_path, [folder], out=tmp_path / "local", ray=None, gpus=None, tiny=True))
    on_ray = runner.run(config_for(tmp_path, [folder], out=tmp_path / "ray", tiny=True))
    assert int(on_ray.exit_code) == int(local.exit_code)
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    assert len([k for k in tree(tmp_path / "local") if k.endswith(".md")]) == 4
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert (report["documents"]["total"], report["pages"]["total"]) == (4, 7)
    workers = report["workers"]
    assert sum(w["documents"] for w in workers) == 4 and sum(w["pages"] for w in workers) == 7
    # Each actor holds one (fake) GPU of its own: Ray sets CUDA_VISIBLE_DEVICES per actor.
    assert sorted(w["cuda_visible_devices"] for w in workers) == ["0", "1"]
    assert len({w["pid"] for w in workers}) == 2


@pytest.mark.slow  # a local Ray cluster; fast: the manifest checks of test_a_worker_never_raises_for_a_document
def test_a_local_run_resumes_a_ray_run_and_skips_what_it_converted(tmp_path, ray_cluster):
    folder = tmp_path / "in"
    for d in (1, 2, 3):
        doc_pdf(folder / f"d{d}.pdf", d, 2)
    ledger = tmp_path / "ledger"
    first = runner.run(config_for(tmp_path, [folder], out=tmp_path / "out"), engine_factory=Factory(ledger=str(ledger)))
    assert int(first.exit_code) == 0
    assert sorted(ledger_pages(ledger)[i][1:] for i in range(6)) == [(d, p) for d in (1, 2, 3) for p in (1, 2)]
    again = runner.run(config_for(tmp_path, [folder], out=tmp_path / "out", ray=None, gpus=None),
                         engine_factory=lambda: (PageEngine(str(ledger)), INFO, 1))
    assert (int(again.exit_code), again.summary.documents_skipped, len(ledger_pages(ledger))) == (0, 3, 6)


@pytest.mark.slow
def test_an_engine_failing_on_one_document_is_a_status_row_and_the_batch_goes_on(tmp_path, ray_cluster):
    folder = tmp_path / "in"
    for d in (1, 2, 3, 4):
        doc_pdf(folder / f"d{d}.pdf", d, 2)
    factory = Factory(ledger=str(tmp_path / "ledger"), fail_doc=3)
    outcome = runner.run(config_for(tmp_path, [folder], out=tmp_path / "out"), engine_factory=factory)
    assert int(outcome.exit_code) == 3
    got = {Path(d.source).name: [p.status for p in d.pages] for d in outcome.docs}
    assert got == {"d1.pdf": ["ok", "ok"], "d2.pdf": ["ok", "ok"], "d3.pdf": ["model_error"] * 2, "d4.pdf": ["ok", "ok"]}
    d3 = json.loads((tmp_path / "out" / "in" / "d3.pdf.json").read_text())
    assert d3["pages"][0]["error"] == "RuntimeError: injected failure on document 3"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["documents"] == {"total": 4, "ok": 3, "failed": 1, "skipped": 0, "skipped_not_ok": 0, "not_reached": 0}
    assert sum(w["documents_failed"] for w in report["workers"]) == 1


@pytest.mark.slow
def test_a_worker_killed_mid_document_is_restarted_and_the_document_redone_once(tmp_path, ray_cluster):
    folder = tmp_path / "in"
    doc_pdf(folder / "big.pdf", 1, 4)
    for d in (2, 3):
        doc_pdf(folder / f"d{d}.pdf", d, 1)
    ledger = tmp_path / "ledger"
    factory = Factory(ledger=str(ledger), kill_doc=1, kill_page=3, marker=str(tmp_path / "killed"))
    outcome = runner.run(config_for(tmp_path, [folder], out=tmp_path / "out"), engine_factory=factory)
    assert (tmp_path / "killed").exists()
    assert int(outcome.exit_code) == 0
    big = [(pid, page) for pid, doc, page in ledger_pages(ledger) if doc == 1]
    # Pages 1-2 were checkpointed before the kill and not redone; page 3 ran again on the new worker.
    assert [page for _, page in big] == [1, 2, 3, 3, 4]
    assert big[0][0] == big[2][0] != big[3][0] == big[4][0]
    out = tmp_path / "out" / "in"
    assert (out / "big.pdf.md").read_text() == "\n\n<--- Page Split --->\n\n".join(f"document 1 page {p}" for p in (1, 2, 3, 4)) + "\n"
    assert sorted(p.name for p in out.iterdir()) == [".ocrprune", "big.pdf.json", "big.pdf.md", "d2.pdf.json", "d2.pdf.md",
                                                     "d3.pdf.json", "d3.pdf.md"]
    assert sorted(p.name for p in (out / ".ocrprune").iterdir()) == [
        "big.pdf.manifest.json", "d2.pdf.manifest.json", "d3.pdf.manifest.json"]  # checkpoints gone, no temp files
    assert sorted(Path(d.source).name for d in outcome.docs) == ["big.pdf", "d2.pdf", "d3.pdf"]


@pytest.mark.slow
def test_a_driver_killed_with_sigkill_then_rerun_converts_only_what_is_missing(tmp_path, ray_cluster):
    folder = tmp_path / "in"
    for d in range(1, 9):
        make_pdf(folder / f"d{d}.pdf", pages=2, text=f"document {d} page {{n}}")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "ocrprune", "convert", str(folder), "--out", str(out), "--base", str(tmp_path),
               *TINY, "--gpus", "2", "-q", f"--ray={ray_cluster}"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "in" / ".ocrprune").glob("*.manifest.json")) and time.monotonic() < deadline:
        assert driver.poll() is None, driver.stderr.read().decode()
        time.sleep(0.2)
    driver.kill()  # SIGKILL: no report, no cleanup
    driver.wait()
    done_at_kill = len(list((out / "in" / ".ocrprune").glob("*.manifest.json")))
    assert 1 <= done_at_kill < 8
    assert not (out / "report.json").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 3, rerun.stderr.decode()[-2000:]  # tiny-random: every page stops at the cap
    report = json.loads((out / "report.json").read_text())
    assert report["documents"]["total"] == 8
    skipped = report["documents"]["skipped"]
    assert skipped >= done_at_kill and skipped + sum(w["documents"] for w in report["workers"]) == 8
    written = sorted(p.name for p in (out / "in").iterdir() if p.name != ".ocrprune")
    assert written == sorted(f"d{d}.pdf.{ext}" for d in range(1, 9) for ext in ("json", "md"))
    assert all(files.is_done(files.OutputLayout(out).paths_for(f"in/d{d}.pdf"),
                             json.loads(files.OutputLayout(out).paths_for(f"in/d{d}.pdf").manifest.read_text())["key"],
                             ("json", "md")) for d in range(1, 9))
    third = subprocess.run(command, env=env, capture_output=True, timeout=300, check=False)
    assert third.returncode == 3
    assert json.loads((out / "report.json").read_text())["documents"]["skipped"] == 8


@pytest.mark.slow
def test_a_ray_run_with_json_logs_writes_one_json_object_per_stderr_line(tmp_path, ray_cluster):
    """Ray's Python loggers, Ray Data's and the driver's C++ core worker (which prints an error
    line about the actor pool's constructor arguments) all come out as JSON lines."""
    folder = tmp_path / "in"
    for d in (1, 2):
        make_pdf(folder / f"d{d}.pdf", pages=1, text=f"document {d}")
    command = [sys.executable, "-m", "ocrprune", "convert", str(folder), "--out", str(tmp_path / "out"), "--base",
               str(tmp_path), *TINY, "--gpus", "2", "--log-format", "json", f"--ray={ray_cluster}"]
    done = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 3, done.stderr[-2000:]  # tiny-random: every page stops at the cap
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line one JSON object
    assert lines[-1]["event"] == "summary"
    assert [line["message"] for line in lines if line["message"].startswith("ray: 2/2 documents done")]
    assert sorted(p.name for p in (tmp_path / "out" / "in").iterdir()) == [
        ".ocrprune", "d1.pdf.json", "d1.pdf.md", "d2.pdf.json", "d2.pdf.md"]
