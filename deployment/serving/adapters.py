"""LoRA adapters served on the base model, and the model-name rule (docs/ARCHITECTURE.md section 5).

A deployment serves one base model and, on the vLLM engine, any number of LoRA adapters (PEFT folders)
on it; each request's `model` picks one. The rule:
  - without adapters, any `model` value (or none) is answered by the one model, so the clients of a
    merged-model deployment (the demo's, the flow's) keep working;
  - with adapters, `model` names the base or an adapter; no `model`, and every /score dialect, get the
    default adapter (`--default-adapter`, else the newest, which is the last one listed); an unknown
    name is a 404 that names the known ones.

Adapters come from `--adapter NAME=SOURCE` (repeatable), or, when no flag is given, from $PHI_SERVE_ADAPTERS:
a JSON object {"NAME": "SOURCE", ...} in release order, which deploy sets in the Azure container. A
SOURCE is a PEFT folder on this machine, or the https URL of one in blob storage, downloaded at start-up
(adapter_download.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ENV_ADAPTERS = "PHI_SERVE_ADAPTERS"
ENV_DEFAULT_ADAPTER = "PHI_SERVE_DEFAULT_ADAPTER"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's LoRAConfig.max_lora_rank accepts only these
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64 characters"


class AdapterError(ValueError):
    """An adapter cannot be served as given; the message (one line) names it and says what to fix."""


class UnknownModel(LookupError):
    """A request named a model this server does not serve: 404, naming the ones it does."""


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=SOURCE",
                        help="serve a LoRA adapter (a PEFT folder, or the https URL of one in blob storage) under "
                             f"NAME on top of --model-dir; repeatable; the vLLM engine only (default: ${ENV_ADAPTERS}, "
                             'a JSON object {"NAME": "SOURCE", ...} in release order)')
    parser.add_argument("--default-adapter", default=os.environ.get(ENV_DEFAULT_ADAPTER) or None, metavar="NAME",
                        help="the adapter that answers requests without `model` and every /score request "
                             f"(default: ${ENV_DEFAULT_ADAPTER}, else the last --adapter)")


def require_lora_engine(engine: str) -> None:
    """Only vLLM serves adapters per request; the transformers engine (the CPU twin) serves merged models."""
    if engine != "vllm":
        raise AdapterError(f"the {engine} engine serves merged models only: serve LoRA adapters with --engine vllm, "
                           "or serve the merged model the trainer wrote beside the adapter (no --adapter)")


def adapter_sources(flags: Sequence[str], env_value: str | None) -> dict[str, str]:
    """NAME -> SOURCE in release order, from the `--adapter` flags, else from $PHI_SERVE_ADAPTERS."""
    if flags:
        pairs = [_split_flag(flag) for flag in flags]
    elif env_value and env_value.strip():
        pairs = _env_pairs(env_value)
    else:
        return {}
    sources: dict[str, str] = {}
    for name, source in pairs:
        if not ADAPTER_NAME.fullmatch(name):
            raise AdapterError(f"adapter name {name[:80]!r} is not valid: use {NAME_RULE}")
        if name in sources:
            raise AdapterError(f"adapter {name!r} is given twice: each NAME once")
        sources[name] = source
    return sources


def _split_flag(flag: str) -> tuple[str, str]:
    name, sep, source = flag.partition("=")
    if not sep or not name or not source:
        raise AdapterError(f"--adapter {flag[:120]!r} is not NAME=SOURCE (a PEFT folder or its https blob URL)")
    return name, source


def _env_pairs(raw: str) -> list[tuple[str, str]]:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise AdapterError(f'${ENV_ADAPTERS} must be a JSON object {{"NAME": "SOURCE", ...}} with string sources')
    return list(value.items())


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA folder on this machine, with what the engine must be sized for."""

    name: str
    path: Path
    rank: int
    base_model: str | None  # base_model_name_or_path in its config: what it was trained on


def read_adapter(name: str, path: Path) -> Adapter:
    """The adapter in `path`, checked to be a PEFT LoRA folder; AdapterError naming what is missing."""
    config_file = path / ADAPTER_CONFIG
    if not config_file.is_file():
        raise AdapterError(f"adapter {name!r}: {config_file} is missing: give the PEFT folder the trainer wrote "
                           "(adapter_config.json and adapter_model.safetensors)")
    if not any((path / weights).is_file() for weights in ADAPTER_WEIGHTS):
        raise AdapterError(f"adapter {name!r}: {path / ADAPTER_WEIGHTS[0]} is missing")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AdapterError(f"adapter {name!r}: {config_file} is not JSON") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"adapter {name!r}: {config_file} is not a LoRA adapter (peft_type "
                           f"{config.get('peft_type') if isinstance(config, dict) else None!r}, expected 'LORA')")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"adapter {name!r}: {config_file} has no positive integer rank `r`")
    return Adapter(name, path, rank, config.get("base_model_name_or_path"))


@dataclass(frozen=True)
class ModelNames:
    """Which model answers a request: the base, or one of the adapters (the rule in this module's docstring)."""

    base: str
    adapters: tuple[str, ...] = ()
    default: str | None = None  # the adapter for requests without `model` and for /score; None without adapters

    @classmethod
    def build(cls, base: str, adapters: Sequence[str], default: str | None = None) -> "ModelNames":
        """`default` must be one of `adapters`; unset, the newest (last) adapter is the default."""
        if base in adapters:
            raise AdapterError(f"adapter name {base!r} is the base model's name: give the adapter another NAME")
        if default is not None and default not in adapters:
            known = ", ".join(adapters) if adapters else "none"
            raise AdapterError(f"--default-adapter {default!r} is not one of the adapters served (served: {known})")
        return cls(base, tuple(adapters), default or (adapters[-1] if adapters else None))

    def pick(self, requested: Any) -> str | None:
        """The adapter a chat request's `model` asks for, or None for the base model."""
        if not self.adapters:
            return None
        if requested is None:
            return self.default
        if requested == self.base:
            return None
        if requested in self.adapters:
            return requested
        shown = requested[:100] if isinstance(requested, str) else requested
        raise UnknownModel(f"model {shown!r} is not served here; this server serves {self.known()} "
                           "(without `model`, the default adapter answers)")

    def for_score(self) -> str | None:
        """/score requests name no model: the default adapter answers (the base without adapters)."""
        return self.default

    def answering(self, adapter: str | None) -> str:
        """The model id a reply reports."""
        return adapter or self.base

    def known(self) -> str:
        return ", ".join(repr(name) for name in (self.base, *self.adapters))

    def cards(self, created: int) -> list[dict[str, Any]]:
        """GET /v1/models: the base, then each adapter (vLLM's shape: an adapter's `parent` is the base)."""
        card = {"object": "model", "created": created, "owned_by": "finetune-phi"}
        return [{"id": self.base, **card, "root": self.base, "parent": None},
                *({"id": name, **card, "root": name, "parent": self.base} for name in self.adapters)]

    def card(self, model_id: str, created: int) -> dict[str, Any]:
        """GET /v1/models/{id}, or UnknownModel."""
        for card in self.cards(created):
            if card["id"] == model_id:
                return card
        raise UnknownModel(f"model {model_id[:100]!r} is not served here; this server serves {self.known()}")


def sized_for(adapters: Mapping[str, Adapter]) -> tuple[int, int]:
    """(max_lora_rank, max_loras) for vLLM, from the adapters' own configs, so a `--lora-r 64` run just works:
    the smallest rank vLLM accepts that holds the largest adapter, and room for every adapter in one batch."""
    largest = max(adapters.values(), key=lambda adapter: adapter.rank)
    fits = [rank for rank in VLLM_LORA_RANKS if rank >= largest.rank]
    if not fits:
        raise AdapterError(f"adapter {largest.name!r} has rank {largest.rank}; vLLM serves ranks up to "
                           f"{VLLM_LORA_RANKS[-1]}: train it with a smaller --lora-r")
    return fits[0], len(adapters)
