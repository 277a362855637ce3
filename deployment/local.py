"""The local endpoint: `deploy --target local` / `teardown --target local` without Azure.

`deploy_local()` starts `python -m deployment.serve` in the background (its own process group,
output in runs/serve/server.log), waits until it answers, smoke-tests it with the Prompt flow's
own client, records it in runs/serve/endpoint.json and points the `phi_endpoint` connection at
it. A running local endpoint is replaced blue/green: the new server starts on another port and
the old one is stopped only after the new one passed its smoke test, so a failed deploy leaves
the old one serving. `teardown_local()` stops the recorded server, and only if the recorded pid
is still our server.

The local server checks no key; the connection still gets a random per-deploy key because the
flow's client requires one. The key lives only in the Prompt flow connection store.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from common.cli import UserError, say, step
from deployment.rollback import Rollback
from training import local_runs

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 25
SMOKE_QUESTION = "Say hello in one short sentence."


@dataclass(frozen=True)
class LocalEndpoint:
    url: str
    port: int
    pid: int
    model_dir: Path


def record_file() -> Path:
    return local_runs.serve_dir() / "endpoint.json"


def log_file() -> Path:
    return local_runs.serve_dir() / "server.log"


# -- the record ------------------------------------------------------------------------------------


def read_record() -> LocalEndpoint | None:
    """The recorded local endpoint (running or not), or None."""
    path = record_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LocalEndpoint(str(data["url"]), int(data["port"]), int(data["pid"]), Path(data["model_dir"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        say(f"warning: ignoring the unreadable local endpoint record {path}")
        return None


def _write_record(endpoint: LocalEndpoint) -> None:
    path = record_file()
    data = {**asdict(endpoint), "model_dir": str(endpoint.model_dir), "started_at": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _serve_lock() -> Iterator[None]:
    """One deploy/teardown at a time on this machine (a second one waits)."""
    import fcntl

    local_runs.serve_dir().mkdir(parents=True, exist_ok=True)
    with open(local_runs.serve_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- processes -------------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str] | None:
    """The live process's command line, or None when there is no such (non-zombie) process."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2 :].startswith("Z"):
                return None
            return [part for part in (proc / "cmdline").read_bytes().decode(errors="replace").split("\0") if part]
        except (OSError, ValueError):
            return None
    if sys.platform.startswith("linux"):
        return None
    try:  # macOS and other systems without /proc
        out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True)
    except OSError:
        return None
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split()[1:]


def is_our_server(pid: int, port: int | None = None) -> bool:
    """True if `pid` is a running `python -m deployment.serve` (on `port`, when given)."""
    argv = _cmdline(pid)
    if not argv or "deployment.serve" not in argv:
        return False
    return port is None or ("--port" in argv and argv[argv.index("--port") + 1 : argv.index("--port") + 2] == [str(port)])


def _reap(pid: int) -> None:
    """Collect `pid` if it is our child (no-op otherwise), so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_process_group(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group, SIGKILL if it does not go."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    # deploy_local starts the server as a session leader; anything else gets only a direct signal.
    signal_all = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    alive = (lambda: _group_alive(pgid)) if pgid == pid else (lambda: _cmdline(pid) is not None)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            signal_all(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not alive() or (pgid == pid and _only_zombies(pgid)):
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            say(f"the local server (pid {pid}) did not stop within {timeout:.0f}s; killing it")
    raise UserError(f"could not stop the local server (pid {pid}); stop it by hand: kill -9 -{pgid}")


def _only_zombies(pgid: int) -> bool:
    """On Linux, True when every process left in the group is a zombie (exited, not yet reaped)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _log_tail(offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(log_file(), "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no server log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in tail) or "(the server log is empty)"


# -- deploy / teardown -----------------------------------------------------------------------------


def _start_server(model_dir: Path, port: int, fresh_log: bool) -> tuple[subprocess.Popen, int]:
    """Start the server in the background; returns it and the log offset its output starts at."""
    serve = local_runs.serve_dir()
    serve.mkdir(parents=True, exist_ok=True)
    if fresh_log:
        log_file().write_bytes(b"")
    offset = log_file().stat().st_size if log_file().exists() else 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "deployment.serve", "--model-dir", str(model_dir),
               "--host", HOST, "--port", str(port)]
    with open(log_file(), "ab") as log:  # O_APPEND: an old server may still be writing to it
        log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} starting the local server on port {port}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=serve, env=env, start_new_session=True,
        )
    return process, offset


def _wait_until_ready(process: subprocess.Popen, port: int, offset: int, timeout: float) -> None:
    """Poll the readiness route (/health: 200 once the model is loaded); UserError with the log tail if
    the server dies or hangs."""
    started = time.monotonic()
    next_note = started + 5.0
    url = f"http://{HOST}:{port}/health"
    while True:
        code = process.poll()
        if code is not None:
            raise UserError(
                f"the local server exited with code {code} before it answered. Its log "
                f"({log_file()}) ends with:\n{_log_tail(offset)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        now = time.monotonic()
        if now - started > timeout:
            _stop_process_group(process.pid)
            raise UserError(
                f"the local server did not answer within {timeout:.0f}s (loading a large model on CPU "
                f"is slow; pass a longer start timeout). Its log ({log_file()}) ends with:\n{_log_tail(offset)}"
            )
        if now >= next_note:
            say(f"    waiting for the model to load ({now - started:.0f}s)")
            next_note = now + 10.0
        time.sleep(0.5)


def _smoke_test(url: str, key: str) -> str:
    """One short chat through the Prompt flow's client; returns a one-line summary."""
    from flows.chat.phi_client import EndpointError, PhiClient

    client = PhiClient(url, key, timeout=120.0, max_retries=1, backoff=0.5)
    try:
        reply = client.chat(SMOKE_QUESTION, max_tokens=16, temperature=0.0)
    except EndpointError as err:
        raise UserError(f"the smoke test failed: {err}") from None
    if reply.finish_reason not in ("stop", "length") or not isinstance(reply.usage, dict):
        raise UserError(f"the smoke test got an unexpected reply shape from {url}: finish_reason={reply.finish_reason!r}")
    return f"{reply.usage.get('completion_tokens', '?')} tokens, finish_reason {reply.finish_reason}"


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
    """Serve `model_dir` (default: the latest local training output) on 127.0.0.1; see the module doc.

    After the smoke test, the evaluation gate (deployment/gate.py) compares the new server with the
    running one on the same held-out conversations; a worse one is stopped and refused unless `force`.
    """
    from deployment.scoring import DEFAULT_LIMIT, base_url, load_eval_set, speaks_openai
    from deployment.serve import check_model_dir

    model_dir = Path(model_dir) if model_dir is not None else local_runs.latest_model_dir()
    model_dir, description = check_model_dir(model_dir)
    eval_set = load_eval_set(eval_file, eval_limit or DEFAULT_LIMIT)  # before anything starts
    with _serve_lock():
        old = read_record()
        if old is not None and not is_our_server(old.pid, old.port):
            say(f"note: the recorded local server (pid {old.pid}) is no longer running; replacing its record")
            old = None
        port = _pick_port(port, old)
        url = f"http://{HOST}:{port}/score"
        with step(f"starting the local server for the {description} on port {port}"):
            process, offset = _start_server(model_dir, port, fresh_log=old is None)
            try:
                _wait_until_ready(process, port, offset, start_timeout)
            except BaseException:
                _stop_process_group(process.pid)
                raise
        rollback = _local_rollback(process.pid, port, offset, old)
        key = secrets.token_urlsafe(24)  # the server checks no key; the flow's client needs one
        with step(f"smoke-testing {url}"), rollback.guard("the smoke test"):
            say(f"    {_smoke_test(url, key)}")
        endpoint = LocalEndpoint(url=url, port=port, pid=process.pid, model_dir=model_dir)
        api = "openai" if speaks_openai(url) else None  # the connection and the evaluation use what it speaks
        with step("evaluate the new server" + (f" against the running one (port {old.port})" if old else " (baseline)")):
            with rollback.guard("the evaluation"):
                verdict = _evaluate(endpoint, old, eval_set, key, api, force=force, margin=margin)
            if not verdict.promote:
                raise rollback.refuse(verdict)
        with rollback.guard("recording the new endpoint"):
            if write_connection:
                from deployment.connection import write_phi_connection

                with step("writing the Prompt flow connection phi_endpoint"):
                    write_phi_connection(endpoint=base_url(url) if api else url, key=key, api=api)
            _write_record(endpoint)
        if old is not None:
            with step(f"stopping the previous local server (pid {old.pid}, port {old.port})"):
                try:
                    _stop_process_group(old.pid)
                except UserError as err:
                    say(f"warning: {err}")
        say(f"local endpoint ready: {url} (pid {process.pid}, log {log_file()})")
        return endpoint


def _pick_port(port: int | None, old: LocalEndpoint | None) -> int:
    if port is None:
        return _free_port()
    if old is not None and port == old.port:
        raise UserError(
            f"port {port} is used by the running local endpoint (pid {old.pid}); a new one starts "
            "beside it before the old one stops: pick another port or leave --port out"
        )
    if _port_in_use(port):
        raise UserError(f"port {port} on {HOST} is already in use: pick another or leave it out")
    return port


def _local_rollback(pid: int, port: int, offset: int, old: LocalEndpoint | None) -> Rollback:
    """Stop the new server if a later step fails (or the gate refuses it); the old one keeps serving."""

    def undo() -> bool:
        try:
            _stop_process_group(pid)
            return True
        except UserError as err:
            say(f"warning: {err}")
            return False

    return Rollback(
        name=f"the new local server (pid {pid}, port {port})",
        undo=undo,
        manual=f"`kill -TERM -{pid}`",
        kept=f"The previous local endpoint {old.url} is still serving." if old else "No local endpoint was serving before.",
        evidence=lambda: f"The new server's log ({log_file()}) ends with:\n{_log_tail(offset)}",
        removed="stopped",
        undo_on_interrupt=True,
    )


# -- the evaluation gate, locally: the "tags" of a running server live in runs/serve/eval-tags.json ---


def _tags_file() -> Path:
    return local_runs.serve_dir() / "eval-tags.json"


def _read_tags(pid: int) -> dict[str, str]:
    try:
        return dict(json.loads(_tags_file().read_text(encoding="utf-8")).get(str(pid), {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _write_tags(pid: int, tags: dict[str, str]) -> None:
    """Keep the tags of running servers only (a stopped server's pid may be reused)."""
    try:
        known = json.loads(_tags_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = {k: v for k, v in known.items() if k.isdigit() and is_our_server(int(k))}
    known[str(pid)] = tags
    tmp = _tags_file().with_name(f".{_tags_file().name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, _tags_file())


def model_id(model_dir: Path) -> str:
    """The model a local server runs: its folder and the time its files last changed."""
    newest = max((p.stat().st_mtime for p in Path(model_dir).rglob("*") if p.is_file()), default=0.0)
    return f"{Path(model_dir).resolve()}@{int(newest)}"


def _evaluate(new: LocalEndpoint, old: LocalEndpoint | None, eval_set, key: str, api: str | None, *, force: bool,
              margin: float | None):
    """Score the new server and the running one (or reuse its scores); the gate's verdict."""
    from deployment import gate
    from deployment.scoring import client_for, score_deployment, speaks_openai

    def scores(endpoint: LocalEndpoint, label: str):
        speaks = api if endpoint is new else ("openai" if speaks_openai(endpoint.url) else None)
        return score_deployment(client_for(endpoint.url, key, api=speaks), eval_set, label=label,
                                model=model_id(endpoint.model_dir))

    new_scores = scores(new, f"new (port {new.port})")
    live = None
    if old is not None:
        label = f"live (port {old.port})"
        live, reused = gate.live_scores("local", _read_tags(old.pid), model_id(old.model_dir), eval_set, label,
                                        lambda: scores(old, label))
        if not reused:
            _write_tags(old.pid, gate.tags_for(live, str(gate.remember("local", live))))
    verdict = gate.decide(new_scores, live, force=force, margin=margin)
    if verdict.promote:
        _write_tags(new.pid, gate.tags_for(new_scores, str(gate.remember("local", new_scores))))
    return verdict


def teardown_local() -> bool:
    """Stop the recorded local server; False when none was running. Safe to run twice."""
    with _serve_lock():
        record = read_record()
        if record is None:
            with contextlib.suppress(FileNotFoundError):
                record_file().unlink()
            return False
        running = is_our_server(record.pid, record.port)
        if running:
            with step(f"stopping the local server (pid {record.pid}, port {record.port})"):
                _stop_process_group(record.pid)
        else:
            say(f"the recorded local server (pid {record.pid}) is not running; removing its record")
        with contextlib.suppress(FileNotFoundError):
            record_file().unlink()
        return running
