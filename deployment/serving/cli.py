"""The server's command line: `python -m deployment.serve` here, `python -m deployment.serving` in the image.

Checks before anything loads (the model folder, the port), then serves in the foreground: the port
opens at once, `GET /live` answers while the model loads, `GET /health` turns 200 once it is loaded.
This package imports nothing from the rest of the repository (it is the image's whole build context),
so its expected failures are `StartupError`s, printed as one line by `main`.
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

from deployment.serving.adapters import add_adapter_arguments

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
ENV_MODEL_NAME = "PHI_SERVE_MODEL_NAME"
NOISY_LOGGERS = ("transformers", "httpx", "ContinuousBatchingLogger")
logger = logging.getLogger("deployment.serve")


class StartupError(Exception):
    """A reason the server cannot start that the operator can fix; the message says how."""


def build_parser(prog: str = "python -m deployment.serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    add_adapter_arguments(parser)
    return parser


def find_model(model_dir: Path):
    """(the resolved model folder, its ModelLocation), or a StartupError saying what a model folder looks like."""
    from deployment.serving.model_dir import locate_model

    model_dir = model_dir.expanduser().resolve()
    try:
        location = locate_model(model_dir)
    except FileNotFoundError as err:
        raise StartupError(
            f"{err}. Train one with `python -m training.submit --target local --model tiny`, or build "
            "an untrained one with `python -m training.tiny_model --out DIR`."
        ) from None
    return model_dir, location


def check_port_free(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise StartupError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use: pick another with --port, or stop the "
                    "local endpoint with `python -m deployment.teardown --target local`"
                ) from None
            raise StartupError(f"cannot bind {host}:{port}: {err.strerror}") from None


def prepare_adapters(args: argparse.Namespace, engine: str, base_name: str):
    """(the model-name rule, NAME -> Adapter): flags or $PHI_SERVE_ADAPTERS checked, blob URLs downloaded.
    Runs before the port opens, so a missing adapter stops the start with one line."""
    from deployment.serving.adapter_download import local_folders
    from deployment.serving.adapters import (ENV_ADAPTERS, AdapterError, ModelNames, adapter_sources, read_adapter,
                                             require_lora_engine)

    try:
        sources = adapter_sources(args.adapter, os.environ.get(ENV_ADAPTERS))
        if sources:
            require_lora_engine(engine)
        names = ModelNames.build(base_name, list(sources), args.default_adapter)
        adapters = {name: read_adapter(name, folder) for name, folder in local_folders(sources).items()}
    except AdapterError as err:
        raise StartupError(str(err)) from None
    return names, adapters


def default_model_name(model_dir: Path) -> str:
    """The folder's name; for Azure ML's mount layout (<name>/<version>) the registered model's name."""
    if model_dir.name.isdigit() and model_dir.parent.name:
        return model_dir.parent.name
    return model_dir.name


def serve(location, host: str, port: int, model_name: str, trust_remote_code: bool = False, names=None) -> int:
    """Serve until stopped; the model loads in the background while /live already answers. Returns the exit code."""
    import uvicorn

    from deployment.serving.app import create_app
    from deployment.serving.engines.transformers_engine import TransformersEngine
    from deployment.serving.state import Server

    server = Server(model_name, names)
    exit_code = 0

    def load() -> None:
        nonlocal exit_code
        started = time.perf_counter()
        try:
            engine = TransformersEngine(location, model_name, trust_remote_code=trust_remote_code)
        except Exception as err:  # noqa: BLE001 - one message, then stop the server
            server.load_error = f"the model failed to load: {type(err).__name__}: {str(err)[:300]}"
            logger.error("error: %s", server.load_error)
            exit_code = 1
            web.should_exit = True
            return
        server.engine = engine
        logger.info("ready in %.1fs: %s", time.perf_counter() - started, engine.describe())

    app = create_app(server, on_startup=lambda: threading.Thread(target=load, name="load-model", daemon=True).start())
    web = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                       timeout_graceful_shutdown=10))
    web.run()
    return exit_code


def start(argv: Sequence[str] | None, prog: str) -> int:
    """Parse, check, serve; raises StartupError for what the operator must fix first."""
    args = build_parser(prog).parse_args(argv)
    model_dir, location = find_model(args.model_dir)
    check_port_free(args.host, args.port)
    name = args.model_name or default_model_name(model_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    names, _adapters = prepare_adapters(args, "transformers", name)  # the vLLM engine will take _adapters
    print(f"serving the {location.describe()} as {name!r} at http://{args.host}:{args.port} "
          "(/v1/chat/completions, /score, /health; Ctrl-C stops it)", file=sys.stderr, flush=True)
    return serve(location, args.host, args.port, name, args.trust_remote_code, names)


def main(argv: Sequence[str] | None = None, prog: str = "python -m deployment.serve") -> int:
    """The command: exit code 0 when stopped, 1 with one `error:` line for a StartupError."""
    try:
        return start(argv, prog)
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
