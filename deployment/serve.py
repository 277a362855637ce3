"""`python -m deployment.serve --model-dir DIR`: serve score.py locally under the Azure ML inference server.

The same server the cloud container runs (`azureml-inference-server-http`, gunicorn + Flask), in the
foreground: `POST http://HOST:PORT/score`, `GET http://HOST:PORT/` for liveness. Stop it with Ctrl-C.

The server's own CLI (`azmlinfsrv`) always binds 0.0.0.0, which would expose an unauthenticated
model on every interface; this wrapper runs the same startup code but binds `--host`
(default 127.0.0.1).
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from common.cli import UserError, run_cli, say

SCORE_SCRIPT = Path(__file__).resolve().with_name("score.py")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
MARKER = "deployment.serve"  # in the server's command line; local.py checks it before signalling a pid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployment.serve",
        description=(
            "Serve deployment/score.py under the Azure ML inference server (the server the managed "
            "online endpoint runs), in the foreground. POST /score; GET / is the liveness probe."
        ),
    )
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="an MLflow transformers model (the trainer's `model` output) or a save_pretrained folder")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to bind (default {DEFAULT_HOST}; the endpoint checks no key, keep it local)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes, each with its own copy of the model (default 1)")
    return parser


def check_model_dir(model_dir: Path) -> tuple[Path, str]:
    """(the resolved model folder, a description of the model in it), or a UserError saying what a
    model folder looks like."""
    from deployment.score import locate_model  # light: score.py imports torch only in init()

    model_dir = model_dir.expanduser().resolve()
    try:
        location = locate_model(model_dir)
    except FileNotFoundError as err:
        raise UserError(
            f"{err}. Train one with `python -m training.submit --target local --model tiny`, or build "
            "an untrained one with `python -m training.tiny_model --out DIR`."
        ) from None
    return model_dir, f"{location.layout} model {location.weights_dir}"


def check_port_free(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is already in use: pick another with --port, or stop the "
                    "local endpoint with `python -m deployment.teardown --target local`"
                ) from None
            raise UserError(f"cannot bind {host}:{port}: {err.strerror}") from None


def serve(model_dir: Path, host: str, port: int, workers: int = 1) -> None:
    """Run the inference server in this process until it is stopped (SIGTERM / Ctrl-C)."""
    from azureml_inference_server_http import amlserver

    if not hasattr(amlserver, "DEFAULT_HOST"):  # guard against a server version that moved it
        raise UserError("this azureml-inference-server-http version is not supported; install the pinned one (make setup)")
    # amlserver.run() passes its module-level DEFAULT_HOST to gunicorn's -b; everything else is stock.
    amlserver.DEFAULT_HOST = host
    os.environ.setdefault("AML_APP_INSIGHTS_ENABLED", "false")
    os.environ.setdefault("SERVER_VERSION_LOG_RESPONSE_ENABLED", "true")
    # gunicorn >= 23 opens a control socket under $HOME/.gunicorn (or XDG_RUNTIME_DIR) by default:
    # not needed here, and two local servers would share its path.
    os.environ["GUNICORN_CMD_ARGS"] = (os.environ.get("GUNICORN_CMD_ARGS", "") + " --no-control-socket").strip()
    sys.argv = [
        MARKER,
        "--entry_script", str(SCORE_SCRIPT),
        "--model_dir", str(model_dir),
        "--port", str(port),
        "--worker_count", str(workers),
    ]
    amlserver.run()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    model_dir, description = check_model_dir(args.model_dir)
    check_port_free(args.host, args.port)
    say(f"serving the {description} at http://{args.host}:{args.port}/score (Ctrl-C stops it)")
    serve(model_dir, args.host, args.port, args.workers)
    return 0


if __name__ == "__main__":
    run_cli(main)
