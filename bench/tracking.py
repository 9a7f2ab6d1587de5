"""MLflow tracking: one parent run per study, one child run per trial, logging that stays off the hot loop.

The embedded default is ``sqlite:///mlflow.db`` in the working directory with artifacts in
``./mlartifacts``; ``--tracking-uri http://host:5000`` points the same code at a tracking server.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.spec import TrialSpec

__all__ = ["DEFAULT_TRACKING_URI", "resolve_tracking_uri", "check_tracking_uri", "store_failed", "environment_tags",
           "StudyTracker", "TrialRun", "STATUS_TAG", "TRIAL_KEY_TAG", "STUDY_TAG", "ROLE_TAG"]

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STUDY_TAG = "marginbench.study"
ROLE_TAG = "marginbench.role"
STATUS_TAG = "marginbench.status"
TRIAL_KEY_TAG = "marginbench.trial_key"
COUNTS_TAG = "marginbench.counts"
LABEL_TAG_PREFIX = "label."
_MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "pruned": "KILLED",
                  "interrupted": "KILLED"}


def resolve_tracking_uri(uri: str | None = None, *, cwd: Path | None = None) -> str:
    """The tracking URI with a relative sqlite path made absolute (workers may change directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        uri = "sqlite:///" + str(((cwd or Path.cwd()) / rel).resolve())
    if uri.startswith(("postgresql://", "postgres://")):  # SQLAlchemy 2.1 reads these as psycopg 3
        from bench.study import with_driver

        uri = with_driver(uri)
    return uri


#: URI schemes MLflow's tracking client takes (``postgresql+psycopg2`` counts as ``postgresql``).
_TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "databricks-uc",
                     "uc")
#: Database schemes among them: checked by opening one connection.
_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")


def check_tracking_uri(uri: str, *, timeout: float = 10.0) -> None:
    """Exits with a one-line error, before anything trains, when ``uri`` cannot be a tracking store: an unknown
    scheme, or a tracking server that does not answer (MLflow's client would retry for about four minutes,
    then raise a long traceback) or that refuses this machine (``mlflow server --allowed-hosts``).

    Only what is certainly wrong stops here: a server asking for credentials, or TLS that MLflow's own
    settings may accept, is left to MLflow.
    """
    import json
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    option = "--tracking-uri (or $MLFLOW_TRACKING_URI)"
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else "file"
    if len(scheme) == 1:  # C:\mlruns
        scheme = "file"
    if scheme not in _TRACKING_SCHEMES:
        raise SystemExit(f"bench: {option} {uri}: unknown scheme {scheme!r}; give http://HOST:PORT (an MLflow "
                         f"server) or sqlite:///mlflow.db")
    if scheme in _DATABASE_SCHEMES:
        _check_database(uri, option, timeout)
        return
    if scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    request = urllib.request.Request(url, data=json.dumps({"max_results": 1}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        body = " ".join(err.read(300).decode(errors="replace").split())
        if err.code == 403 and "host header" in body.lower():
            host = urllib.parse.urlsplit(uri).netloc
            raise SystemExit(f"bench: the MLflow server at {uri} refuses requests addressed to {host!r} ({body}); "
                             f"start it with `mlflow server ... --allowed-hosts {host}` (its default admits only "
                             f"localhost and private IP addresses)") from err
        if err.code == 404:
            raise SystemExit(f"bench: {option} {uri} answers, but not as an MLflow tracking server (404 for "
                             f"{url}); check the host, port and path") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return
        raise SystemExit(f"bench: the MLflow tracking server {option} {uri} does not answer ({err.reason}); "
                         f"start it (`mlflow server ...`, docs/shared-mode.md) or fix the URI") from err
    except (TimeoutError, OSError) as err:
        raise SystemExit(f"bench: the MLflow tracking server {option} {uri} does not answer within {timeout:g} s "
                         f"({err}); start it (`mlflow server ...`, docs/shared-mode.md) or fix the URI") from err


def store_failed(uri: str, err: BaseException) -> SystemExit:
    """The one-line exit of a worker whose tracking store fails (at its start, or again after failing a trial):
    MLflow's error (a server's 500 after its retries, a locked database) names neither the option nor what to do."""
    from bench.study import hide_password

    reason = " ".join(f"{type(err).__name__}: {err}".split())
    reason = reason if len(reason) <= 500 else reason[:500] + " ..."
    return SystemExit(f"bench: the MLflow tracking store --tracking-uri (or $MLFLOW_TRACKING_URI) "
                      f"{hide_password(uri)} keeps failing ({reason}); fix it, then run again (`bench run` queues "
                      f"again the trials it failed)")


def _check_database(uri: str, option: str, timeout: float) -> None:
    """Opens one connection to a database tracking store (MLflow would retry a refused one for about two
    minutes, then print a traceback; a missing driver is a bare ModuleNotFoundError)."""
    import sqlalchemy
    import sqlalchemy.exc

    from bench.study import hide_password

    shown = hide_password(uri)
    connect_args = {"connect_timeout": max(1, int(timeout))} if uri.startswith("postgres") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as err:
        raise SystemExit(f"bench: {option} {shown} needs a database driver that is not installed ({err}); for "
                         f"PostgreSQL: pip install 'marginbench[postgres]' (psycopg2-binary), or give an MLflow "
                         f"server: http://HOST:PORT") from err
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as err:
        reason = " ".join(str(getattr(err, "orig", None) or err).split()).rstrip(".?")
        raise SystemExit(f"bench: cannot open the MLflow tracking store {option} {shown}: {reason}. Check the "
                         f"host, port, user and database name; a new database is made with `createdb -h HOST -U "
                         f"USER DB` (docs/shared-mode.md)") from err
    finally:
        engine.dispose()


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local sqlite store (``./mlartifacts``); a server decides its own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


@functools.lru_cache(maxsize=1)
def _git_commit() -> str:
    """This checkout's commit (``-dirty`` with uncommitted changes to tracked files); where git cannot tell (a
    copy without ``.git``, as sent to a GPU machine), ``$MARGINBENCH_GIT_COMMIT``, else ``unknown``."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("MARGINBENCH_GIT_COMMIT") or "unknown"


def device_name(device: str | torch.device | None = None) -> str:
    """What trains on ``device`` (None: CUDA when present, else the CPU), for the ``device_name`` tag and
    `bench perf`: the GPU's name, ``Apple M2 Pro (MPS)``, or ``cpu (arch, N cores)``."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device if device is not None and device.index is not None else 0)
    if device is not None and device.type == "mps":  # was described as the CPU
        return f"{_apple_chip()} (MPS)"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _apple_chip() -> str:
    """The Mac's chip (``Apple M2 Pro``), from sysctl; the machine's architecture where it does not say."""
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"Apple {platform.machine()}"


def environment_tags(device: str | torch.device | None = None) -> dict[str, str]:
    """Tags that say where a number came from: git commit, torch/CUDA versions, device, host."""
    return {
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "cuda_version": str(torch.version.cuda or "none"),
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
    }


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Defers SIGINT and SIGTERM to the end of the block: the first one that lands inside is handled as before
    (KeyboardInterrupt, `bench.workers.Terminated`) once the block is done; a second one is handled at once, so a
    block that hangs can still be stopped (an OS signal mask would merge it with the first and swallow it).
    Outside the main thread (where Python delivers no signal) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    held: list[tuple[int, Any]] = []
    raised: list[bool] = []

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def hold(signum: int, frame: Any) -> None:
        if not held:
            held.append((signum, frame))
            return
        restore()  # pressed again: the hold ends, and this one is handled where it landed
        try:
            _handle(signum, frame, previous[signum])
        except BaseException:
            raised.append(True)  # it stands for the first one too
            raise

    for s in previous:
        signal.signal(s, hold)
    try:
        yield
    finally:
        restore()
        if held and not raised:
            _handle(*held[0], previous[held[0][0]])


def _handle(signum: int, frame: Any, handler: Any) -> None:
    """Does what ``handler`` (a `signal.getsignal` value, restored already) does with signal ``signum``."""
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:  # SIG_DFL, or a handler not installed from Python: the default action
        signal.raise_signal(signum)


def _param_text(value: Any) -> str:
    """A flat param as MLflow keeps it: ``str``, except a mapping (timm's ``backbone.kwargs``) as JSON, which
    `bench.spec.parse_param` reads back (``str`` wrote Python's repr, which it cannot)."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, Mapping) else str(value)


class TrialRun:
    """An open child run.

    `log_epoch` hands the epoch's metrics to a background thread and returns at once, so the trial never
    waits on the tracking store; `flush` waits for what is queued; `finish` flushes and closes the run.
    ``log_seconds`` is the time the caller spent in logging calls (what `bench perf` reports); ``closed_as`` the
    status `finish` closed it with (None while it is open).
    """

    def __init__(self, client: Any, run_id: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.client = client
        self.run_id = run_id
        self.log_seconds = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._pending: list[Any] = []
        self.closed_as: str | None = None

    def log_epoch(self, epoch: int, metrics: dict[str, float], *, timestamp: float | None = None) -> None:
        """Queues an epoch's metrics at step ``epoch``, stamped ``timestamp`` (seconds since the Unix epoch; now
        when None)."""
        from mlflow.entities import Metric

        t0 = time.perf_counter()
        now = int((time.time() if timestamp is None else timestamp) * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        self._pending.append(self._pool.submit(self.client.log_batch, self.run_id, metrics=batch))
        self.log_seconds += time.perf_counter() - t0

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        t0 = time.perf_counter()
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.log_seconds += time.perf_counter() - t0

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), subdir)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def flush(self) -> None:
        """Waits until every queued metric batch is written; re-raises a write's error."""
        t0 = time.perf_counter()
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        self.log_seconds += time.perf_counter() - t0

    def finish(self, status: str) -> None:
        """Closes the run with marginbench status ``finished``/``diverged``/``failed``/``pruned``/``interrupted``.

        A queued write that failed is re-raised before the run is closed, except when it closes as ``failed``
        or ``interrupted``: such a run is no result, and it must not stay RUNNING (nor a Ctrl-C turn into the
        write's error) over an epoch it lost; the error is logged then.
        """
        try:
            self.flush()
        except Exception:
            if status not in ("failed", "interrupted"):
                raise
            log.exception("run %s: a metric write failed; closing it as %s all the same", self.run_id, status)
        self._pool.shutdown(wait=True)
        self.set_tags({STATUS_TAG: status})
        self.client.set_terminated(self.run_id, _MLFLOW_STATUS[status])
        self.closed_as = status


class StudyTracker:
    """The MLflow side of a study: the experiment, its parent run (found again on resume), child runs.

    Args:
        study: the study (grid) name; also the experiment name.
        tracking_uri: MLflow URI (None: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` here).
        description: shown on the parent run.
    """

    def __init__(self, study: str, tracking_uri: str | None = None, *, description: str = "",
                 grid_path: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.study = study
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(study)
        if experiment is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    study, artifact_location=artifact_root(self.tracking_uri))
            except Exception:  # another worker created it between our look and our create
                experiment = self.client.get_experiment_by_name(study)
                if experiment is None:
                    raise
                self.experiment_id = experiment.experiment_id
        elif experiment.lifecycle_stage == "deleted":  # MLflow would refuse the first run with a traceback
            uri, eid = self.tracking_uri, experiment.experiment_id
            raise SystemExit(f"bench: the MLflow experiment of study {study!r} (id {eid}) in {uri} was deleted; with "
                             f"`export MLFLOW_TRACKING_URI={uri}`, `mlflow experiments restore --experiment-id {eid}` "
                             f"brings it back with its runs, `mlflow gc --backend-store-uri {uri} --experiment-ids "
                             f"{eid}` removes it for good (the next run makes a new one)")
        else:
            self.experiment_id = experiment.experiment_id
        self.parent_run_id = self._parent_run(description, grid_path)

    def _parent_run(self, description: str, grid_path: str | None) -> str:
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=(f"tags.`{ROLE_TAG}` = 'study' and "
                                                      f"tags.`{STUDY_TAG}` = '{self.study}'"),
                                       order_by=["attributes.start_time ASC"], max_results=1)
        if runs:
            return runs[0].info.run_id
        # the counts tag exists from the start so that close() only ever updates it: a tag's first write
        # on a SQL-backed server is a look-then-insert, which workers closing together race on
        tags = {ROLE_TAG: "study", STUDY_TAG: self.study, "mlflow.runName": self.study, COUNTS_TAG: "not counted yet",
                "mlflow.note.content": description, **environment_tags()}
        if grid_path:
            tags["grid_path"] = grid_path
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study)
        return run.info.run_id

    def check(self) -> None:
        """Reads the study's experiment: raises the store's error when the store does not answer."""
        self.client.get_experiment(self.experiment_id)

    def reopen(self) -> None:
        """Marks the study's run RUNNING again (a resumed or extended study is training once more)."""
        if self.client.get_run(self.parent_run_id).info.status != "RUNNING":
            self.client.update_run(self.parent_run_id, status="RUNNING")

    def close(self, counts: dict[str, int]) -> None:
        """Ends the study's run once no trial is waiting or running, so the UI does not show it running
        forever; the per-status counts go in its ``marginbench.counts`` tag. Idempotent: every worker that
        finds the queue empty calls it."""
        from mlflow.exceptions import MlflowException

        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials"
        try:
            self.client.set_tag(self.parent_run_id, COUNTS_TAG, summary)
        except MlflowException:  # a study run made before the tag existed from the start: the other
            self.client.set_tag(self.parent_run_id, COUNTS_TAG, summary)  # worker's insert made it an update
        if self.client.get_run(self.parent_run_id).info.status == "RUNNING":
            self.client.set_terminated(self.parent_run_id, "FINISHED")

    def finished_keys(self) -> set[str]:
        """Trial keys with a finished (or diverged) child run: what a resumed sequential run skips."""
        runs = self.child_runs()
        return {r.data.tags.get(TRIAL_KEY_TAG, "") for r in runs
                if r.data.tags.get(STATUS_TAG) in ("finished", "diverged")}

    def child_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = "
                                                                           f"'{self.parent_run_id}'",
                                       max_results=50000)

    def trial_runs(self, key: str) -> list[Any]:
        """This study's child runs of one trial key (every attempt), oldest first."""
        return self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and "
                                                     f"tags.`{TRIAL_KEY_TAG}` = '{key}'",
                                       order_by=["attributes.start_time ASC"], max_results=1000)

    def mark_interrupted(self, run_id: str) -> None:
        """Closes a child run left RUNNING by a process that died: status tag ``interrupted``, MLflow KILLED.
        Reports count only finished runs, so the retry that follows is the trial's one result."""
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(STATUS_TAG, "interrupted")])
        self.client.set_terminated(run_id, _MLFLOW_STATUS["interrupted"])

    def start_trial(self, spec: TrialSpec, *, device: str | None = None, trial_number: int | None = None,
                    extra_tags: dict[str, str] | None = None, opened: list[TrialRun] | None = None) -> TrialRun:
        """Opens a child run with the spec as params and the cell's labels as tags.

        Args:
            opened: the run is appended here as soon as MLflow has made it, before its params are written, so
                that a caller's KeyboardInterrupt handler can close it (`bench.runner`) even when the interrupt
                lands inside this call; SIGINT and SIGTERM are deferred from the run's creation until it is
                appended (`_interrupts_deferred`).
        """
        from mlflow.entities import Param

        tags = {"mlflow.parentRunId": self.parent_run_id, ROLE_TAG: "trial", STUDY_TAG: self.study,
                TRIAL_KEY_TAG: spec.key(), "seed": str(spec.seed), "label": spec.label,
                STATUS_TAG: "running", **environment_tags(device)}
        tags.update({LABEL_TAG_PREFIX + axis: value for axis, value in spec.labels.items()})
        if trial_number is not None:
            tags["optuna_trial"] = str(trial_number)
        tags.update(extra_tags or {})
        name = f"{spec.label} seed={spec.seed}"
        # an interrupt between MLflow's insert and the note in `opened` left the run RUNNING for good: nothing
        # held it to close; it is raised once the run is noted
        with _interrupts_deferred():
            created = self.client.create_run(self.experiment_id, tags={**tags, "mlflow.runName": name}, run_name=name)
            run = TrialRun(self.client, created.info.run_id)
            if opened is not None:
                opened.append(run)
        params = [Param(k, _param_text(v)) for k, v in spec.to_params().items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.run_id, params=params[i:i + 100])
        return run

    def record_failure(self, run: TrialRun, err: BaseException) -> None:
        """Logs an exception's traceback as an artifact and closes the run as failed."""
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        run.log_text(text, "traceback.txt")
        run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        run.finish("failed")
