"""The local target of the rollout: `deploy --target local` / `teardown --target local` without Azure.

deployment/rollout.py runs the procedure (start new, smoke test, gate, promote, retire, connection);
`LocalTarget` supplies this machine's calls: `python -m deployment.serve` started in the background
beside the running one (its own session, output in runs/serve/server.log), promoted by recording
it in runs/serve/endpoint.json, and the old server stopped only then, so a failed or refused
deploy leaves the old one serving. `teardown_local()` stops the recorded server, and only if the
recorded pid is still our server.

The local server checks no key; the connection still gets a random per-deploy key because the
flow's client requires one. The key lives only in the Prompt flow connection store.
"""
from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from common import processes, runs
from common.cli import UserError, say, step
from common.files import write_atomic
from deployment.connection import PhiConnection, save
from deployment.rollback import Rollback
from deployment.rollout import Deployment, GateSettings, Retired, Writer, rollout
from training import local_runs

if TYPE_CHECKING:  # pragma: no cover
    from deployment.scoring import EvalSet, Scores

HOST = processes.HOST
START_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LocalEndpoint:
    url: str
    port: int
    pid: int
    model_dir: Path


# -- the record ------------------------------------------------------------------------------------


def read_record() -> LocalEndpoint | None:
    """The recorded local endpoint (running or not), or None."""
    path = runs.serve_record()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LocalEndpoint(str(data["url"]), int(data["port"]), int(data["pid"]), Path(data["model_dir"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        say(f"warning: ignoring the unreadable local endpoint record {path}")
        return None


def _write_record(endpoint: LocalEndpoint) -> None:
    data = {**asdict(endpoint), "model_dir": str(endpoint.model_dir), "started_at": time.time()}
    write_atomic(runs.serve_record(), json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _serve_lock() -> Iterator[None]:
    """One deploy/teardown at a time on this machine (a second one waits)."""
    import fcntl

    runs.serve_dir().mkdir(parents=True, exist_ok=True)
    with open(runs.serve_lock(), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_our_server(pid: int, port: int | None = None) -> bool:
    """True if `pid` is a running `python -m deployment.serve` (on `port`, when given)."""
    argv = processes.cmdline(pid)
    if not argv or "deployment.serve" not in argv:
        return False
    return port is None or ("--port" in argv and argv[argv.index("--port") + 1 : argv.index("--port") + 2] == [str(port)])


def model_id(model_dir: Path) -> str:
    """The model a local server runs: its folder and the time its files last changed."""
    newest = max((p.stat().st_mtime for p in Path(model_dir).rglob("*") if p.is_file()), default=0.0)
    return f"{Path(model_dir).resolve()}@{int(newest)}"


# -- the gate's "tags" of a running server live in runs/serve/eval-tags.json, by pid ---------------


def _read_tags(pid: int) -> dict[str, str]:
    try:
        return dict(json.loads(runs.serve_tags().read_text(encoding="utf-8")).get(str(pid), {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _write_tags(pid: int, tags: dict[str, str]) -> None:
    """Keep the tags of running servers only (a stopped server's pid may be reused)."""
    try:
        known = json.loads(runs.serve_tags().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = {k: v for k, v in known.items() if k.isdigit() and is_our_server(int(k))}
    known[str(pid)] = tags
    write_atomic(runs.serve_tags(), json.dumps(known, indent=2) + "\n")


# -- the target ------------------------------------------------------------------------------------


class LocalTarget:
    """The rollout's steps on this machine (deployment/rollout.py's Target)."""

    scope = "local"
    fetch_scores = None  # the scores of a local server are under runs/eval/scores/ only
    key_hint = "any key: the local server checks none"

    def __init__(self, model_dir: Path | None, port: int | None, *, start_timeout: float = START_TIMEOUT_S) -> None:
        from deployment.serve import check_model_dir

        chosen = Path(model_dir) if model_dir is not None else local_runs.latest_model_dir()
        self.model_dir, self.description = check_model_dir(chosen)
        self.asked_port, self.start_timeout = port, start_timeout
        self.key = secrets.token_urlsafe(24)  # the server checks no key; the flow's client needs one
        self.old: LocalEndpoint | None = None
        self.process: Any = None
        self.offset = 0
        self.endpoint: LocalEndpoint | None = None
        self.route: PhiConnection | None = None

    def hold(self) -> contextlib.AbstractContextManager[None]:
        return _serve_lock()

    def prepare(self) -> None:
        old = read_record()
        if old is not None and not is_our_server(old.pid, old.port):
            say(f"note: the recorded local server (pid {old.pid}) is no longer running; replacing its record")
            old = None
        self.old, self.port = old, _pick_port(self.asked_port, old)

    @property
    def start_title(self) -> str:
        return f"starting the local server for the {self.description} on port {self.port}"

    def rollback(self) -> Rollback:
        """Stop the new server if a later step fails (or the gate refuses it); the old one keeps serving."""
        old = self.old
        return Rollback(
            name=f"the new local server on port {self.port}",
            undo=self._stop_new,
            manual=f"`python -m deployment.teardown --target local`, or stop the server on port {self.port}",
            kept=f"The previous local endpoint {old.url} is still serving." if old else "No local endpoint was serving before.",
            evidence=lambda: f"The new server's log ({runs.serve_log()}) ends with:\n"
                             f"{processes.log_tail(runs.serve_log(), self.offset)}",
            removed="stopped",
            undo_on_interrupt=True,
        )

    def start_new(self, rollback: Rollback) -> Deployment:
        command = [sys.executable, "-m", "deployment.serve", "--model-dir", str(self.model_dir), "--host", HOST,
                   "--port", str(self.port)]
        self.process, self.offset = processes.start(command, runs.serve_log(), cwd=runs.serve_dir(),
                                                    banner=f"starting the local server on port {self.port}")
        pid = self.process.pid
        rollback.name, rollback.manual = f"the new local server (pid {pid}, port {self.port})", f"`kill -TERM -{pid}`"
        processes.wait_healthy(self.process, f"http://{HOST}:{self.port}/health", runs.serve_log(),
                               timeout=self.start_timeout, offset=self.offset, what="the local server")
        url = f"http://{HOST}:{self.port}/score"
        self.endpoint = LocalEndpoint(url=url, port=self.port, pid=pid, model_dir=self.model_dir)
        self.route = PhiConnection.probed(url, self.key)  # the connection and the evaluation use what it speaks
        return Deployment(f"the server on port {self.port}", f"new (port {self.port})", model_id(self.model_dir), str(pid))

    def client(self, deployment: Deployment) -> Any:
        from deployment.scoring import client_on

        if self.endpoint is not None and deployment.ref == str(self.endpoint.pid):
            return client_on(self.connection(deployment))
        assert self.old is not None and deployment.ref == str(self.old.pid)
        return client_on(PhiConnection.probed(self.old.url, self.key))

    def live(self) -> Deployment | None:
        old = self.old
        if old is None:
            return None
        return Deployment(f"the running one (port {old.port})", f"live (port {old.port})", model_id(old.model_dir),
                          str(old.pid), _read_tags(old.pid))

    def gate_estimate(self, eval_set: "EvalSet") -> str:
        """Nothing bills locally; the scoring progress lines show the time."""
        return ""

    def tag(self, deployment: Deployment, tags: dict[str, str]) -> None:
        _write_tags(int(deployment.ref), tags)

    def keep_scores(self, scores: "Scores", deployment: Deployment, cached: Path | None) -> str:
        return str(cached) if cached is not None else ""  # runs/eval/scores/ is the local record

    def promote(self, new: Deployment, rollback: Rollback) -> None:
        assert self.endpoint is not None
        with rollback.guard("recording the new endpoint"):
            _write_record(self.endpoint)

    def retiring(self, new: Deployment) -> list[str]:
        return [f"the previous local server (pid {self.old.pid}, port {self.old.port})"] if self.old else []

    def retire(self, old: list[str]) -> Retired:
        assert self.old is not None
        try:
            processes.stop_group(self.old.pid)
        except processes.ProcessError as err:
            return Retired(tuple(old), tuple(old), str(err))
        return Retired(tuple(old))

    def connection(self, new: Deployment) -> PhiConnection:
        assert self.endpoint is not None
        assert self.route is not None, "start_new probes the route first"
        return self.route

    def where(self, new: Deployment) -> str:
        assert self.endpoint is not None
        return f"the local endpoint {self.endpoint.url} (pid {self.endpoint.pid}) is live"

    def _stop_new(self) -> bool:
        if self.process is None:
            return True
        try:
            processes.stop_group(self.process)
            return True
        except processes.ProcessError as err:
            say(f"warning: {err}")
            return False


def _pick_port(port: int | None, old: LocalEndpoint | None) -> int:
    if port is None:
        return processes.free_port()
    if old is not None and port == old.port:
        raise UserError(
            f"port {port} is used by the running local endpoint (pid {old.pid}); a new one starts "
            "beside it before the old one stops: pick another port or leave --port out"
        )
    if processes.port_in_use(port):
        raise UserError(f"port {port} on {HOST} is already in use: pick another or leave it out")
    return port


def deploy_local(
    model_dir: Path | None = None,
    port: int | None = None,
    *,
    start_timeout: float = START_TIMEOUT_S,
    write_connection: bool = True,
    eval_file: Path | None = None,
    eval_limit: int | None = None,
    force: bool = False,
    margin: float | None = None,
) -> LocalEndpoint:
    """Serve `model_dir` (default: the latest local training output) on 127.0.0.1 through the rollout.

    The evaluation gate compares the new server with the running one on the same held-out
    conversations; a worse one is stopped and refused unless `force`.
    """
    target = LocalTarget(model_dir, port, start_timeout=start_timeout)
    writers: list[Writer] = [("the connection", save)] if write_connection else []
    rollout(target, GateSettings(eval_file, eval_limit, force, margin), writers)
    assert target.endpoint is not None
    say(f"local endpoint ready: {target.endpoint.url} (pid {target.endpoint.pid}, log {runs.serve_log()})")
    return target.endpoint


def teardown_local() -> bool:
    """Stop the recorded local server; False when none was running. Safe to run twice."""
    with _serve_lock():
        record = read_record()
        if record is None:
            with contextlib.suppress(FileNotFoundError):
                runs.serve_record().unlink()
            return False
        running = is_our_server(record.pid, record.port)
        if running:
            with step(f"stopping the local server (pid {record.pid}, port {record.port})"):
                processes.stop_group(record.pid)
        else:
            say(f"the recorded local server (pid {record.pid}) is not running; removing its record")
        with contextlib.suppress(FileNotFoundError):
            runs.serve_record().unlink()
        return running
