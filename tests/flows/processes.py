"""Stopping a process group a test started (`start_new_session=True`), politely first."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, *, interrupt_first: bool = False) -> None:
    """SIGINT (when `interrupt_first`: lets `pf` clean up), then SIGTERM, then SIGKILL, waiting between."""
    steps = ((signal.SIGINT, 15),) if interrupt_first else ()
    for sig, wait in (*steps, (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
