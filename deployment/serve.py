"""`python -m deployment.serve --model-dir DIR [--engine auto|vllm|transformers]`: the project's server, in the
foreground (docs/SERVING.md).

The server lives in deployment/serving/ (also the Azure image's build context); this module is the
local command and the deploy tool's door to its checks. vLLM's CPU build cannot share `.venv` (it pins
another torch and transformers), so `--engine vllm` here runs the same command in `.venv-vllm`, which
`make vllm` builds; without it, one line says so.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from common.cli import UserError, run_cli
from deployment.serving.cli import ENV_MODEL_NAME, StartupError, build_parser, find_model
from deployment.serving.cli import main as serve_main
from deployment.serving.engines import vllm_installed

MARKER = "deployment.serve"  # in the server's command line; local.py checks it before signalling a pid
REPO_ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"
__all__ = ["ENV_MODEL_NAME", "MARKER", "build_parser", "check_model_dir", "main"]


def check_model_dir(model_dir: Path) -> tuple[Path, str]:
    """(the resolved model folder, a description of the model in it), or a UserError (deploy's local path)."""
    try:
        model_dir, location = find_model(model_dir)
    except StartupError as err:
        raise UserError(str(err)) from None
    return model_dir, location.describe()


def run_in_vllm_venv(argv: list[str], python: Path = VLLM_PYTHON) -> None:
    """Replace this process with the same command in .venv-vllm (same pid, same arguments)."""
    if not python.is_file():
        raise UserError("--engine vllm needs vLLM's CPU build, which lives in its own environment: build it with "
                        "`make vllm` (.venv-vllm, about 5 minutes), then run the same command again")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.execve(python, [str(python), "-m", MARKER, *argv], {**os.environ, "PYTHONPATH": path})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = build_parser().parse_known_args(argv)
    if args.engine == "vllm" and not vllm_installed():
        run_in_vllm_venv(argv)
    return serve_main(argv)


if __name__ == "__main__":
    run_cli(main)
