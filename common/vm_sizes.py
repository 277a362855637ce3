"""The Azure VM sizes this project knows: vCPUs, GPUs, quota family and list price.

One table for training (quota checks before a submit; the service's own `list_sizes()` wins
when it answers) and deployment (instance types, their cost and quota).
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class VmSize:
    name: str
    family: str
    """The quota family's id, e.g. standardNCADSA100v4Family."""
    vcpus: int
    gpus: int
    usd_per_hour: float | None = None
    """List price, East US (third-party snapshot, 2026-11); None where not recorded."""
    serving_note: str = ""
    """Set for the sizes offered as endpoint instance types: what the size is good for."""

    @property
    def sku(self) -> str:
        return self.name

    @property
    def quota_family(self) -> str:
        return family_display(self.family)


def family_display(family: str) -> str:
    """standardNCADSA100v4Family -> 'Standard NCADSA100v4 Family Cluster Dedicated vCPUs' (the portal's name)."""
    match = re.fullmatch(r"standard(.+?)Family", family, flags=re.IGNORECASE)
    core = match.group(1).strip("_ ") if match else family
    return f"Standard {core} Family Cluster Dedicated vCPUs"


KNOWN_SIZES: dict[str, VmSize] = {
    size.name.lower(): size
    for size in (
        VmSize("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24, 1, 3.673,
               "1x A100 80 GB; Phi-3.5-mini in bf16 with room for long contexts (default)"),
        VmSize("Standard_NC48ads_A100_v4", "standardNCADSA100v4Family", 48, 2),
        VmSize("Standard_NC96ads_A100_v4", "standardNCADSA100v4Family", 96, 4),
        VmSize("Standard_NC40ads_H100_v5", "standardNCadsH100v5Family", 40, 1, 6.98,
               "1x H100 94 GB; faster, twice the price"),
        VmSize("Standard_NC80adis_H100_v5", "standardNCadsH100v5Family", 80, 2),
        VmSize("Standard_ND96asr_v4", "standardNDASv4_A100Family", 96, 8),
        VmSize("Standard_ND96amsr_A100_v4", "standardNDAMSv4_A100Family", 96, 8),
        VmSize("Standard_ND96isr_H100_v5", "standardNDSH100v5Family", 96, 8),
        VmSize("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, 1),
        VmSize("Standard_NC64as_T4_v3", "standardNCASv3_T4Family", 64, 4),
        VmSize("Standard_E16s_v3", "standardESv3Family", 16, 0, 1.008,
               "CPU only, 128 GB RAM: Phi-3.5-mini answers, slowly (tens of seconds)"),
        VmSize("Standard_E4s_v3", "standardESv3Family", 4, 0, 0.252,
               "CPU only, 32 GB RAM: small fine-tunes / smoke tests, not Phi-3.5-mini"),
        VmSize("Standard_DS3_v2", "standardDSv2Family", 4, 0),
    )
}


def known_vm(name: str) -> VmSize | None:
    return KNOWN_SIZES.get(name.lower())
