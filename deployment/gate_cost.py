"""What the evaluation gate will cost before it runs: its expected time and price on an instance type.

The gate asks every conversation and instruction prompt of the eval set of the new deployment (and
of the live one when its scores cannot be reused). Time is the tokens it decodes over the
instance's decode throughput with scoring.CONCURRENCY requests in flight; price is that time at the
instance's list price (common/vm_sizes.py): the new deployment bills while it is evaluated. The
throughputs are assumptions for Phi-3.5-mini in bf16 (stated in docs/DEPLOY.md), not measurements.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from deployment.scoring import EvalSet

TOKENS_PER_S = {
    "standard_nc24ads_a100_v4": 400.0,
    "standard_nc40ads_h100_v5": 650.0,
    "standard_e16s_v3": 12.0,
    "standard_e4s_v3": 3.0,
}
"""Decode tokens/s of Phi-3.5-mini (bf16) with 8 requests in flight, summed over the requests (assumed)."""
GPU_FALLBACK_TOKENS_PER_S = 400.0
CPU_FALLBACK_TOKENS_PER_S = 3.0
TYPICAL_INSTRUCTION_TOKENS = 200
"""A typical reply to one of the default instruction prompts (a short text in the asked shape)."""


@dataclass(frozen=True)
class GateEstimate:
    instance_type: str
    requests: int
    typical_tokens: int
    """Replies about as long as the references (conversations) or TYPICAL_INSTRUCTION_TOKENS."""
    worst_tokens: int
    """Every reply runs to its max_tokens."""
    tokens_per_s: float
    usd_per_hour: float | None

    @property
    def typical_s(self) -> float:
        return self.typical_tokens / self.tokens_per_s

    @property
    def worst_s(self) -> float:
        return self.worst_tokens / self.tokens_per_s

    def usd(self, seconds: float) -> float | None:
        return None if self.usd_per_hour is None else self.usd_per_hour * seconds / 3600.0

    def sentence(self) -> str:
        def price(seconds: float) -> str:
            usd = self.usd(seconds)
            return f"${usd:.2f}" if usd is not None else "an unknown price"

        return (f"evaluation gate: {self.requests} requests on {self.instance_type} (assumed {self.tokens_per_s:g} "
                f"tokens/s): about {_duration(self.typical_s)} and {price(self.typical_s)}, up to "
                f"{_duration(self.worst_s)} and {price(self.worst_s)} if no reply stops before max_tokens")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(instance_type: str, eval_set: "EvalSet", *, deployments: int = 2) -> GateEstimate:
    """The gate's expected time and cost on `instance_type` for `deployments` deployments scored (2: new and live)."""
    from common.vm_sizes import known_vm
    from deployment import instructions, metrics

    size = known_vm(instance_type)
    rate = TOKENS_PER_S.get(instance_type.lower()) or (
        GPU_FALLBACK_TOKENS_PER_S if size is not None and size.gpus else CPU_FALLBACK_TOKENS_PER_S)
    typical = worst = 0
    for c in eval_set.conversations:
        budget = metrics.max_tokens_for(c.reference)
        typical += min(budget, math.ceil(metrics.TOKENS_PER_WORD * metrics.reply_words(c.reference)))
        worst += budget
    typical += len(eval_set.prompts) * min(TYPICAL_INSTRUCTION_TOKENS, instructions.MAX_TOKENS)
    worst += len(eval_set.prompts) * instructions.MAX_TOKENS
    requests = len(eval_set.conversations) + len(eval_set.prompts)
    return GateEstimate(instance_type, requests * deployments, typical * deployments, worst * deployments, rate,
                        size.usd_per_hour if size is not None else None)
