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

from deployment.serving.engines import ENGINES, choose, vllm_installed

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
ENV_MODEL_NAME = "PHI_SERVE_MODEL_NAME"
ENV_API_KEY = "PHI_SERVE_API_KEY"
ENV_ENGINE = "PHI_SERVE_ENGINE"
NOISY_LOGGERS = ("transformers", "httpx", "ContinuousBatchingLogger", "vllm")
VLLM_MISSING = ("--engine vllm: vLLM is not installed in this Python ({python}). Locally it lives in its own "
                "environment: build it with `make vllm`, then run the same command again")
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
                        help=f"interface to bind (default {DEFAULT_HOST}); beyond loopback a key is required")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    add_security_arguments(parser)
    parser.add_argument("--model-name", default=os.environ.get(ENV_MODEL_NAME),
                        help=f"the model id /v1/models reports (default: ${ENV_MODEL_NAME}, else the folder's name)")
    parser.add_argument("--engine", choices=ENGINES, default=os.environ.get(ENV_ENGINE) or "auto",
                        help="auto (default; or $PHI_SERVE_ENGINE): vLLM on a CUDA GPU where vLLM is installed, "
                             "else transformers' continuous batching; vllm locally runs vLLM's CPU build (`make vllm`)")
    # LoRA adapters (--adapter NAME=DIR, repeatable) join here: the adapters issue, on the vLLM engine.
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow running Python code shipped in the model folder, for an architecture "
                             "transformers does not ship (never needed for Phi-3/Phi-4)")
    return parser


# -- the edge: keys and LongRoPE (issue 24) ---------------------------------------------------------


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=os.environ.get(ENV_API_KEY) or None,
                        help=f"require Authorization: Bearer <key> on every route but /live and /health (default: "
                             f"${ENV_API_KEY}; prefer the variable: a flag shows in the process list)")
    parser.add_argument("--keyless-behind-gateway", action="store_true",
                        help="bind beyond loopback without a key, because a gateway in front checks one (the Azure "
                             "container: the endpoint's key auth); never on a network you do not control")
    parser.add_argument("--accept-longrope-coupling", action="store_true",
                        help="let PHI_SERVE_CONTEXT_TOKENS pass a LongRoPE model's original_max_position_embeddings "
                             "(4,096 for Phi-3.5-mini and Phi-4-mini): one chat past it then changes the replies of "
                             "every chat decoded beside it")


def check_key(host: str, api_key: str | None, keyless_behind_gateway: bool) -> None:
    """Beyond loopback, a key or the deliberate flag: an open port on a network serves anyone who finds it."""
    from deployment.serving.edge import is_loopback

    if api_key is not None and len(api_key) < 16:
        raise StartupError(f"the API key is {len(api_key)} characters; use at least 16 (e.g. `openssl rand -hex 24`)")
    if not is_loopback(host) and api_key is None and not keyless_behind_gateway:
        raise StartupError(
            f"--host {host} serves beyond this machine, and no key is set: set {ENV_API_KEY} (clients send it as "
            "Authorization: Bearer <key>), or pass --keyless-behind-gateway if a gateway in front checks keys"
        )


# -- the model and the port --------------------------------------------------------------------------


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


def default_model_name(model_dir: Path) -> str:
    """The folder's name; for Azure ML's mount layout (<name>/<version>) the registered model's name."""
    if model_dir.name.isdigit() and model_dir.parent.name:
        return model_dir.parent.name
    return model_dir.name


def serve(location, args: argparse.Namespace, model_name: str) -> int:
    """Serve until stopped; the model loads in the background while /live already answers. Returns the exit code."""
    import uvicorn

    from deployment.serving.app import create_app
    from deployment.serving.engines import load_engine
    from deployment.serving.protocol import uvicorn_settings
    from deployment.serving.state import Server

    server = Server(model_name)
    exit_code = 0

    def load() -> None:
        nonlocal exit_code
        started = time.perf_counter()
        try:
            engine = load_engine(args.engine, location, model_name, trust_remote_code=args.trust_remote_code,
                                 accept_longrope_coupling=args.accept_longrope_coupling)
        except Exception as err:  # noqa: BLE001 - one message, then stop the server
            server.load_error = f"the model failed to load: {type(err).__name__}: {str(err)[:300]}"
            logger.error("error: %s", server.load_error)
            exit_code = 1
            web.should_exit = True
            return
        server.engine = engine
        logger.info("ready in %.1fs: %s", time.perf_counter() - started, engine.describe())

    app = create_app(server, on_startup=lambda: threading.Thread(target=load, name="load-model", daemon=True).start(),
                     bind_host=args.host, api_key=args.api_key)
    web = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                                       timeout_graceful_shutdown=10, **uvicorn_settings()))
    web.run()
    return exit_code


def start(argv: Sequence[str] | None, prog: str) -> int:
    """Parse, check, serve; raises StartupError for what the operator must fix first."""
    args = build_parser(prog).parse_args(argv)
    check_key(args.host, args.api_key, args.keyless_behind_gateway)
    model_dir, location = find_model(args.model_dir)
    check_port_free(args.host, args.port)
    engine = choose(args.engine)
    if engine == "vllm" and not vllm_installed():
        raise StartupError(VLLM_MISSING.format(python=sys.executable))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's own INFO lines would drown ours
    name = args.model_name or default_model_name(model_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args.engine = engine  # auto, resolved
    gate = "a key required" if args.api_key else "no key"
    print(f"serving the {location.describe()} as {name!r} on the {engine} engine at http://{args.host}:{args.port} "
          f"with {gate} (/v1/chat/completions, /score, /health; Ctrl-C stops it)", file=sys.stderr, flush=True)
    return serve(location, args, name)


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
