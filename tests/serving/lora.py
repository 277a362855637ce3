"""Small LoRA adapters (PEFT folders) of the tiny model, made on the spot for the adapter tests.

PEFT starts a LoRA's B matrix at zero, which would make every adapter answer like the base. These are
initialised at random (seeded; PEFT's `init_lora_weights=False`, meant for tests) so that two adapters of
one base answer differently, as two fine-tunes would.
"""
from __future__ import annotations

from pathlib import Path


def make_lora_adapter(base_dir: Path, out: Path, rank: int, seed: int) -> Path:
    """A PEFT LoRA folder (adapter_config.json, adapter_model.safetensors) of `base_dir` at `rank`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["qkv_proj", "o_proj"], lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out
