"""`python -m flows.chat_page`: Prompt flow's own chat page for flows/chat, in a browser, offline.

It is `pf flow test --flow flows/chat --ui`, run in this process with two changes:

- The page's serve app starts with the `spawn` start method instead of `fork`. promptflow 1.18.5
  starts it with `multiprocessing.Process` (fork on Linux) after the parent has created its
  module-level `FileLock`s (`pf.sqlite.lock`, ...). filelock >= 3.30 refuses a lock inherited
  across fork ("UnixFileLock ... was inherited across fork; construct a new instance"), so plain
  `pf flow test --ui` dies on its first connection lookup. A spawned child imports promptflow
  afresh and builds its own locks: nothing is inherited, no filelock downgrade is needed
  (docs/CHAT.md says why this over pinning an older filelock).
- `common.pf_settings.OFFLINE_ENV` is set for it and its children: the Azure Monitor exporter that
  promptflow builds even with telemetry off would otherwise poll Azure's settings service and retry.

The page itself is served by the Prompt flow service (`pf service`, a background process on port
23333 or the next free one); it keeps running after Ctrl+C, as with `pf`: `pf service stop` ends it.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Sequence

from common.cli import ArgumentParser, UserError, run_cli
from common.pf_settings import OFFLINE_ENV

FLOW_DIR = Path(__file__).resolve().parent / "chat"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m flows.chat_page",
        description=(
            "Open Prompt flow's chat page on the chat flow (`pf flow test --ui`, fixed for the pinned "
            "filelock and kept offline). Needs the phi_endpoint connection (python -m deployment.deploy)."
        ),
    )
    parser.add_argument("--flow", type=Path, default=FLOW_DIR, help=f"the flow folder (default {FLOW_DIR})")
    parser.add_argument("--port", type=int, help="port of the flow's serve app (default: a free one)")
    parser.add_argument("--skip-open-browser", action="store_true",
                        help="print the page's URL without opening a browser (headless machines)")
    return parser


def pf_argv(flow: Path, port: int | None, skip_open_browser: bool) -> list[str]:
    """The `pf` command this runs."""
    argv = ["pf", "flow", "test", "--flow", str(flow), "--ui"]
    if port is not None:
        argv += ["--port", str(port)]
    if skip_open_browser:
        argv.append("--skip-open-browser")
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flow = args.flow.expanduser().resolve()
    if not (flow / "flow.dag.yaml").is_file():
        raise UserError(f"{flow} has no flow.dag.yaml: pass the chat flow's folder with --flow")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {args.port}")
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    multiprocessing.set_start_method("spawn", force=True)
    from promptflow._cli.pf import main as pf_main  # heavy: only once the arguments are good

    sys.argv = pf_argv(flow, args.port, args.skip_open_browser)
    pf_main()  # runs until Ctrl+C (pf stops the serve app itself)
    return 0


if __name__ == "__main__":
    run_cli(main)
