"""`python -m deployment.serve --model-dir DIR`: the project's server, in the foreground (docs/SERVING.md).

The server lives in deployment/serving/ (also the Azure image's build context); this module is the
local command and the deploy tool's door to its checks.
"""
from __future__ import annotations

from pathlib import Path

from common.cli import UserError, run_cli
from deployment.serving.cli import ENV_MODEL_NAME, StartupError, build_parser, find_model, main

MARKER = "deployment.serve"  # in the server's command line; local.py checks it before signalling a pid
__all__ = ["ENV_MODEL_NAME", "MARKER", "build_parser", "check_model_dir", "main"]


def check_model_dir(model_dir: Path) -> tuple[Path, str]:
    """(the resolved model folder, a description of the model in it), or a UserError (deploy's local path)."""
    try:
        model_dir, location = find_model(model_dir)
    except StartupError as err:
        raise UserError(str(err)) from None
    return model_dir, location.describe()


if __name__ == "__main__":
    run_cli(main)
