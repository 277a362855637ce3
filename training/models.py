"""The models this project fine-tunes: one table, read by submit, its dry run and `--list-models`.

Why a table in the code: the dry run touches no network, so every default is a fixed name here;
the registry's lifecycle tags (FinetuneDeprecationDate / FinetuneRetirementDate) say when a
model retires but name no replacement, so "use this instead" lives here too; and a pinned hub
commit per model keeps an upstream template or weight change from silently changing training.

Facts (checked 2026-11 in public sources; re-check before relying on them):
- Azure AI Foundry retired every Phi-3 and Phi-3.5 model on 2025-08-30; their azureml registry
  assets carry FinetuneDeprecationDate 2025-06-30 and FinetuneRetirementDate 2025-08-30 (in
  Azure/azureml-assets, e.g. assets/models/system/phi-3-mini-4k-instruct/spec.yaml, version 15).
- In Azure/azureml-assets (snapshot of 2026-07-23), the only non-retired Phi model with
  `finetune_compute_allow_list` and chat-completion fine-tuning is `Phi-4` (14B, 16k context,
  version 8; its allow list includes Standard_NC24ads_A100_v4). Phi-4-mini-instruct appears only
  as Foundry Local entries without fine-tuning tags, so it is offered to `--recipe sft` only.
- Hub revisions: the `main` commits of microsoft/Phi-3.5-mini-instruct (2fe19245...) and
  microsoft/Phi-4-mini-instruct (cfbefacb..., "Update README.md (#43)", 2025-12-10) as several
  public projects pin them; the model hub itself cannot be reached from here to re-check.
Memory needs are computed from the parameter count (bytes per parameter below), before
activations, so they are floors: full fine-tune = fp32 weights + grads + AdamW's two moments.
No heavy imports: `--list-models` and `--help` stay instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Mapping

from common.cli import UserError, say

A100_GB = 80
BYTES_FULL = 16
"""fp32 master weights (4) + gradients (4) + AdamW moments (8), the trainer's full fine-tune."""
BYTES_LORA = 4
"""Frozen weights loaded in float32 (the trainer's default --model-dtype); adapters are tiny."""
BYTES_REGISTRY_LORA = 2
"""The registry pipeline's LoRA in fp16 (`precision: 16` in model_specific_defaults)."""


@dataclass(frozen=True)
class SupportedModel:
    key: str
    """Short name, also accepted by --model."""
    params_b: float
    context: int
    kv_kib_per_token: int
    """bf16 KV cache per token: 2 (K, V) x layers x KV heads x head dim x 2 bytes."""
    license: str
    hub_id: str | None = None
    """Hugging Face id for --recipe sft (None: not offered there)."""
    revision: str | None = None
    """The pinned hub commit the job trains from."""
    registry_name: str | None = None
    """Name in registry azureml (None: not in the registry for fine-tuning)."""
    finetune_retired: date | None = None
    """Azure's fine-tuning retirement date for the registry asset (its FinetuneRetirementDate tag)."""
    note: str = ""

    @property
    def recipes(self) -> tuple[str, ...]:
        offered = []
        if self.hub_id:
            offered.append("sft")
        if self.registry_name and not self.retired():
            offered.append("registry")
        return tuple(offered)

    def retired(self, today: date | None = None) -> bool:
        return self.finetune_retired is not None and self.finetune_retired <= (today or date.today())

    def memory(self) -> str:
        """What one A100 80 GB must hold before activations."""
        if "sft" in self.recipes:
            full, lora = self.params_b * BYTES_FULL, self.params_b * BYTES_LORA
            fits = "fits" if full < A100_GB else "does not fit"
            return f"full ~{full:.0f} GB ({fits}), LoRA ~{lora:.0f} GB"
        return f"LoRA fp16 ~{self.params_b * BYTES_REGISTRY_LORA:.0f} GB (pipeline, DeepSpeed)"

    def status(self, today: date | None = None) -> str:
        parts = []
        if self.hub_id:
            parts.append("sft: hub weights")
        if self.registry_name:
            parts.append(f"registry: fine-tuning retired {self.finetune_retired}" if self.retired(today)
                         else "registry: offered")
        return "; ".join(parts)


MODELS: tuple[SupportedModel, ...] = (
    SupportedModel("phi-3.5-mini", 3.82, 131072, 384, "MIT", hub_id="microsoft/Phi-3.5-mini-instruct",
                   revision="2fe192450127e6a83f7441aef6e3ca586c338b77", registry_name="Phi-3.5-mini-instruct",
                   finetune_retired=date(2025, 8, 30), note="the tutorials' model; SFT default"),
    SupportedModel("phi-4-mini", 3.84, 131072, 128, "MIT", hub_id="microsoft/Phi-4-mini-instruct",
                   revision="cfbefacb99257ffa30c83adab238a50856ac3083",
                   note="Foundry's named replacement for Phi-3.x; GQA, 200k vocabulary"),
    SupportedModel("phi-3-mini-4k", 3.82, 4096, 384, "MIT", registry_name="Phi-3-mini-4k-instruct",
                   finetune_retired=date(2025, 8, 30), note="the registry tutorial's model"),
    SupportedModel("phi-4", 14.7, 16384, 200, "MIT", registry_name="Phi-4",
                   note="registry default: the current Phi the registry fine-tunes"),
)

DEFAULT_SFT_MODEL = "microsoft/Phi-3.5-mini-instruct"
DEFAULT_REGISTRY_MODEL = "Phi-4"
CURRENT_SFT_CHOICE = "microsoft/Phi-4-mini-instruct"
REGISTRY_CHOICE_NOTE = (
    f"the registry default {DEFAULT_REGISTRY_MODEL} is the only current Phi that registry azureml offers "
    "chat_completion_pipeline for fine-tuning (Phi-3/3.5 retired 2025-08-30; Phi-4-mini is not offered there: "
    f"use --recipe sft --model {CURRENT_SFT_CHOICE}). A real submit reads the model's lifecycle tags first."
)


def find(name: str) -> SupportedModel | None:
    """A model by short key, hub id or registry name (case-insensitive); None when not in the table."""
    wanted = name.strip().rstrip("/").lower()
    for model in MODELS:
        if wanted in {model.key, (model.hub_id or "").lower(), (model.registry_name or "").lower()}:
            return model
    return None


def hub_model(name: str) -> tuple[str, str | None]:
    """(hub id, pinned revision) for --recipe sft; a short key becomes its hub id. Unknown ids: no pin."""
    model = find(name)
    if model is not None and model.hub_id:
        return model.hub_id, model.revision
    return name, None


def registry_name(name: str | None) -> str:
    """The registry asset name for --recipe registry (a hub-style `org/` prefix or a short key is accepted)."""
    if not name:
        return DEFAULT_REGISTRY_MODEL
    model = find(name)
    if model is not None and model.registry_name:
        return model.registry_name
    return name.strip().rstrip("/").split("/")[-1]


# ---------------------------------------------------------------- registry lifecycle tags


def _tag_date(tags: Mapping[str, Any], key: str) -> date | None:
    """A lifecycle date from the asset's tags: `2025-08-30` or `2025-08-30T00:00:00.000000Z`, any key case."""
    for name, value in tags.items():
        if name.lower() == key.lower() and value:
            text = str(value).strip()
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
            except ValueError:
                return date.fromisoformat(text[:10])
    return None


@dataclass(frozen=True)
class Lifecycle:
    deprecated: date | None
    retired: date | None


def lifecycle(name: str, tags: Mapping[str, Any] | None) -> Lifecycle:
    """Fine-tuning dates from the registry model's tags; with no tags (a dry run), from the table."""
    if tags is not None:
        retired = _tag_date(tags, "FinetuneRetirementDate")
        deprecated = _tag_date(tags, "FinetuneDeprecationDate")
        if retired or deprecated:
            return Lifecycle(deprecated, retired)
    model = find(name)
    return Lifecycle(None, model.finetune_retired if model else None)


def check_registry_model(name: str, tags: Mapping[str, Any] | None, today: date | None = None) -> None:
    """Refuse a model whose fine-tuning is retired, naming a current choice; warn when it is deprecated."""
    today = today or date.today()
    dates = lifecycle(name, tags)
    if dates.retired is not None and dates.retired <= today:
        raise UserError(
            f"{name} was retired for fine-tuning in registry azureml on {dates.retired}: the pipeline would be refused. "
            f"Use `--recipe registry --model {DEFAULT_REGISTRY_MODEL}` (the current Phi the registry fine-tunes), or "
            f"`--recipe sft --model {CURRENT_SFT_CHOICE}` (this repo's trainer; Phi-3.5-mini's hub weights also work "
            "there). `python -m training.submit --list-models` shows the choices."
        )
    if dates.deprecated is not None and dates.deprecated <= today:
        say(f"    warning: {name} is deprecated for fine-tuning since {dates.deprecated}"
            + (f" and retires on {dates.retired}" if dates.retired else "") + f"; consider {DEFAULT_REGISTRY_MODEL}.")


def table(today: date | None = None) -> str:
    """The `--list-models` text."""
    rows = [("model (--model)", "recipes", "context", "KV/token", "A100 80 GB needs", "license", "status", "revision")]
    for model in MODELS:
        rows.append((
            model.hub_id or model.registry_name or model.key,
            ",".join(model.recipes) or "-",
            f"{model.context // 1024}k",
            f"{model.kv_kib_per_token} KiB",
            model.memory(),
            model.license,
            model.status(today),
            (model.revision or "-")[:12],
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines.append(f"Defaults: --recipe sft {DEFAULT_SFT_MODEL}; --recipe registry {DEFAULT_REGISTRY_MODEL}. "
                 "Memory: before activations (full = fp32 weights, grads and AdamW moments).")
    lines.append("Azure AI Foundry retired every Phi-3 and Phi-3.5 model on 2025-08-30 (replacement: Phi-4-mini-instruct, "
                 "which the registry does not offer for fine-tuning: use --recipe sft).")
    return "\n".join(lines) + "\n"
