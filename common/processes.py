"""The child processes the project starts: servers in a session of their own, and logged steps.

One place for a free port, starting a server (new session, output to a log), waiting until it
answers (showing the log's tail when it does not), stopping its whole process group, and running
one command as a named, logged step. The local endpoint, the benchmarks, the demo, the smoke path
and the tests all use it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

from common.cli import UserError, say

HOST = "127.0.0.1"
LOG_TAIL_LINES = 25
STOP_TIMEOUT_S = 20.0
INTERRUPT_GRACE_S = 30.0
"""After Ctrl-C, how long a step may take to clean up (a deploy stops the server it started) before it is killed."""


class ProcessError(UserError):
    """A child process failed, did not answer, or could not be stopped."""


# -- ports -----------------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# -- servers ---------------------------------------------------------------------------------------


def start(command: Sequence[str], log: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
          banner: str | None = None) -> tuple[subprocess.Popen, int]:
    """Start `command` in a new session (so its whole group can be stopped), stdout and stderr appended to `log`.

    Returns the process and the log offset its output starts at (an old server may share the log).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:  # O_APPEND: another process may still be writing to it
        if banner:
            out.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')} {banner}\n".encode())
            out.flush()
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )
    return process, offset


def log_tail(log: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last non-empty lines of `log` from `offset`, indented for a message."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return f"    (no log at {log})"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in tail) or "    (the log is empty)"


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(process: subprocess.Popen, url: str, log: Path, *, timeout: float, offset: int = 0,
                 what: str = "the server", ready: Callable[[str], bool] = answers) -> None:
    """Poll `url` until `ready` (default: it answers 200). If the process exits or the time runs out,
    stop its group and raise ProcessError with the log's tail."""
    started = time.monotonic()
    next_note = started + 10.0
    while not ready(url):
        code = process.poll()
        if code is not None:
            raise ProcessError(f"{what} exited with code {code} before it answered. Its log ({log}) ends with:\n"
                               f"{log_tail(log, offset)}")
        now = time.monotonic()
        if now - started > timeout:
            stop_group(process)
            raise ProcessError(f"{what} did not answer within {timeout:.0f}s (loading a large model on CPU is slow). "
                               f"Its log ({log}) ends with:\n{log_tail(log, offset)}")
        if now >= next_note:
            say(f"    waiting for {what} ({now - started:.0f}s)")
            next_note = now + 10.0
        time.sleep(0.3)


# -- stopping --------------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str] | None:
    """The live process's command line, or None when there is no such (non-zombie) process."""
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if not _running(proc):
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


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _only_zombies(pgid)


def _fields(stat_file: Path) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    stat = stat_file.read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _running(proc: Path) -> bool:
    """True while any thread of the process runs. A leader whose main thread has ended shows state Z
    while its other threads still shut down (a Python server after SIGTERM): it is not gone yet."""
    try:
        return any(_fields(task / "stat")[0] != "Z" for task in (proc / "task").iterdir())
    except (OSError, ValueError):
        return False


def _only_zombies(pgid: int) -> bool:
    """On Linux, True when every process left in the group has exited (a zombie, not yet reaped)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            in_group = int(_fields(entry / "stat")[2]) == pgid
        except (OSError, ValueError, IndexError):
            continue
        if in_group and _running(entry):
            return False
    return True


def _reap(process: subprocess.Popen | int) -> None:
    """Collect an exited child so it does not linger as a zombie (no-op for a process not ours)."""
    if isinstance(process, subprocess.Popen):
        process.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(process, os.WNOHANG)


def _reaped(process: subprocess.Popen | int) -> bool:
    """Our own child counts as stopped once collected (its exit code known); another's pid once it is gone."""
    return not isinstance(process, subprocess.Popen) or process.poll() is not None


def stop_group(process: subprocess.Popen | int, *, timeout: float = STOP_TIMEOUT_S, interrupt_first: bool = False) -> None:
    """Stop a process started by `start` (a session leader) with its whole group: SIGINT when
    `interrupt_first` (lets `pf` clean up), then SIGTERM, then SIGKILL. A pid that leads no group
    of its own gets the signals alone. ProcessError when it cannot be stopped."""
    pid = process.pid if isinstance(process, subprocess.Popen) else process
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        _reap(process)
        return
    leader = pgid == pid
    signal_all: Callable[[int], None] = (lambda sig: os.killpg(pgid, sig)) if leader else (lambda sig: os.kill(pid, sig))
    alive: Callable[[], bool] = (lambda: _group_alive(pgid)) if leader else (lambda: cmdline(pid) is not None)
    steps = [(signal.SIGINT, timeout)] if interrupt_first else []
    for sig, wait in (*steps, (signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            signal_all(sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(process)
            if not alive() and _reaped(process):
                return
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            say(f"process {pid} did not stop within {timeout:.0f}s; killing it")
    raise ProcessError(f"could not stop process {pid}; stop it by hand: kill -9 -{pgid}")


# -- logged steps ----------------------------------------------------------------------------------


class StepFailed(ProcessError):
    """A step exited non-zero: the message names it, its exit code, its log and the log's tail."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


@dataclass(frozen=True)
class StepResult:
    stdout: str
    seconds: float


def shown(command: Sequence[str], repo_root: Path) -> str:
    """A command line as a person would type it in the repository root."""
    def short(arg: str) -> str:
        arg = arg.replace(str(Path(sys.executable).with_name("pf")), "pf").replace(sys.executable, "python")
        arg = arg.replace(str(repo_root) + os.sep, "")
        return f'"{arg}"' if " " in arg else arg

    return " ".join(short(part) for part in command)


def _relay(source: IO[str], sinks: Sequence[IO[str]], lock: threading.Lock, keep: list[str] | None = None) -> None:
    for line in source:
        with lock:
            for sink in sinks:
                sink.write(line)
                sink.flush()
        if keep is not None:
            keep.append(line)


def run_step(name: str, command: Sequence[str], log_path: Path, *, cwd: Path, env: Mapping[str, str],
             live: bool = False) -> StepResult:
    """Run one command as the named step `name`; returns its stdout and duration.

    Its stdout and stderr go to `log_path`; with `live` they also show on the terminal as they come
    (a long cloud step), else only this function's start and end lines do. After Ctrl-C (which
    reaches the step too: same process group) the step gets INTERRUPT_GRACE_S to finish its own cleanup.
    """
    say(f"==> {name}: {shown(command, cwd)}")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stdout: list[str] = []
    lock = threading.Lock()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shown(command, cwd)}\n")
        process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        relays: list[threading.Thread] = []
        try:  # from here on Ctrl-C gives the step its grace, even while the relays are still starting (slow under load)
            for source, sink, keep in ((process.stdout, sys.stdout, stdout), (process.stderr, sys.stderr, None)):
                relays.append(threading.Thread(target=_relay, args=(source, (log, sink) if live else (log,), lock, keep)))
                relays[-1].start()
            process.wait()
        except KeyboardInterrupt:
            try:
                process.wait(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        finally:
            for relay in relays:
                relay.join()
            process.wait()
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise StepFailed(f"step '{name}' failed (exit {process.returncode}) after {elapsed:.0f}s; its log {log_path} "
                         f"ends with:\n{log_tail(log_path)}", elapsed)
    say(f"<== {name}: done in {elapsed:.0f}s")
    return StepResult("".join(stdout), elapsed)
