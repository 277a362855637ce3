"""`python -m deployment.serve --model-dir DIR`: the project's server (docs/ARCHITECTURE.md section 5), in the foreground.

OpenAI `POST /v1/chat/completions` (streaming too), `GET /v1/models`, `GET /health`, and `POST /score`
for the tutorials' clients, on transformers' continuous batching (deployment/engine.py). The same
command runs in the Azure deployment's container (`--host 0.0.0.0 --port 8000` on
$AZUREML_MODEL_DIR). The port opens at once: `GET /live` answers while the model loads,
`GET /health` turns 200 when it is loaded. Stop it with Ctrl-C.

The server checks no key: bind it to 127.0.0.1 (the default) unless something in front of it does
(the managed online endpoint checks the endpoint key before forwarding a request).
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from common.cli import ArgumentParser, UserError, run_cli, say

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
MARKER = "deployment.serve"  # in the server's command line; local.py checks it before signalling a pid
ENV_MODEL_NAME = "PHI_SERVE_MODEL_NAME"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m deployment.serve",
        description=(
            "Serve a chat model with continuous batching: OpenAI POST /v1/chat/completions, GET /v1/models, "
            "GET /health, and POST /score for the tutorials' request formats. Runs in the foreground."
        ),
    )
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="a save_pretrained folder, the trainer's MLflow model, or an azureml hftransformers "
                             "MLflow model (the registry pipeline's output); searched 2 folders deep")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to bind (default {DEFAULT_HOST}; the server checks no key, keep it local)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--model-name", default=os.environ.get(ENV_MODEL_NAME),
                        help=f"the model id /v1/models reports (default: ${ENV_MODEL_NAME}, else the folder's name)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow running Python code shipped in the model folder, for an architecture "
                             "transformers does not ship (never needed for Phi-3/Phi-4)")
    return parser


def find_model(model_dir: Path):
    """(the resolved model folder, its ModelLocation), or a UserError saying what a model folder looks like."""
    from deployment.model_dir import locate_model

    model_dir = model_dir.expanduser().resolve()
    try:
        location = locate_model(model_dir)
    except FileNotFoundError as err:
        raise UserError(
            f"{err}. Train one with `python -m training.submit --target local --model tiny`, or build "
            "an untrained one with `python -m training.tiny_model --out DIR`."
        ) from None
    return model_dir, location


def check_model_dir(model_dir: Path) -> tuple[Path, str]:
    """(the resolved model folder, a description of the model in it), or a UserError (deploy's local path)."""
    model_dir, location = find_model(model_dir)
    return model_dir, location.describe()


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


def default_model_name(model_dir: Path) -> str:
    """The folder's name; for Azure ML's mount layout (<name>/<version>) the registered model's name."""
    if model_dir.name.isdigit() and model_dir.parent.name:
        return model_dir.parent.name
    return model_dir.name


def serve(model_dir: Path, location, host: str, port: int, model_name: str, trust_remote_code: bool = False) -> int:
    """Serve until stopped; the model loads in the background while /live already answers. Returns the exit code."""
    import uvicorn

    from deployment.engine import TransformersEngine
    from deployment.openai_api import Server, create_app

    server = Server(model_name)
    exit_code = 0

    def load() -> None:
        nonlocal exit_code
        started = time.perf_counter()
        try:
            engine = TransformersEngine(location, model_name, trust_remote_code=trust_remote_code)
        except Exception as err:  # noqa: BLE001 - one message, then stop the server
            server.load_error = f"the model failed to load: {type(err).__name__}: {str(err)[:300]}"
            logging.getLogger("deployment.serve").error("error: %s", server.load_error)
            exit_code = 1
            web.should_exit = True
            return
        server.engine = engine
        logging.getLogger("deployment.serve").info("ready in %.1fs: %s", time.perf_counter() - started, engine.describe())

    app = create_app(server, on_startup=lambda: threading.Thread(target=load, name="load-model", daemon=True).start())
    web = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                       timeout_graceful_shutdown=10))
    web.run()
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_dir, location = find_model(args.model_dir)
    check_port_free(args.host, args.port)
    name = args.model_name or default_model_name(model_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "httpx", "ContinuousBatchingLogger"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    say(f"serving the {location.describe()} as {name!r} at http://{args.host}:{args.port} "
        "(/v1/chat/completions, /score, /health; Ctrl-C stops it)")
    return serve(model_dir, location, args.host, args.port, name, args.trust_remote_code)


if __name__ == "__main__":
    run_cli(main)
