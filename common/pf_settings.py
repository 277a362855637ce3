"""Prompt flow settings the project wants everywhere: no tracing service, no telemetry, offline.

They are declared once, in the repository's `pf.yaml`, which Prompt flow reads from the working
directory upward: `pf flow test` run anywhere in the repository (and every command here) starts
no tracing service (14 s instead of 2 s) and sends no telemetry, and nothing lands in ~/.promptflow.
`apply()` (`python -m common.pf_settings`) copies them into the pf.yaml of PF_HOME_DIRECTORY, for
a Prompt flow home that is used from outside the repository.

OFFLINE_ENV is for the environment of Prompt flow processes (no pf.yaml setting covers it):
promptflow's telemetry handler builds an `azure-monitor-opentelemetry-exporter` exporter even with
telemetry off, and every exporter starts a control-plane client that polls
settings.sdk.monitor.azure.com and retries ("OneSettings CHANGE request failed ... Retrying").
The exporter reads `APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED` (its `_configuration/_state.py`) and
`APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL` (its statsbeat, which reports to Azure too).
Every command of the project sets them (common/tool_env.py); export them in a shell that runs `pf` by hand.
"""
from __future__ import annotations

from pathlib import Path

from common.tool_env import OFFLINE_ENV

PROJECT_SETTINGS = Path(__file__).resolve().parents[1] / "pf.yaml"
__all__ = ["OFFLINE_ENV", "PROJECT_SETTINGS", "apply", "settings"]


def settings() -> dict[str, object]:
    """The repository's pf.yaml as `pf config set` keys: {"trace.destination": "none", ...}."""
    import yaml

    def flat(tree: dict, prefix: str = "") -> dict[str, object]:
        items: dict[str, object] = {}
        for key, value in tree.items():
            items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return items

    return flat(yaml.safe_load(PROJECT_SETTINGS.read_text(encoding="utf-8")))


def apply() -> None:
    from promptflow._sdk._configuration import Configuration  # heavy: imported only here

    config = Configuration.get_instance()
    for key, value in settings().items():
        config.set_config(key, value)


def main(argv: list[str] | None = None) -> int:
    from common.cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m common.pf_settings",
        description="Copy the repository's Prompt flow settings (pf.yaml: no tracing service, no telemetry) "
                    "into PF_HOME_DIRECTORY's pf.yaml, for using that Prompt flow home outside the repository.",
    )
    parser.parse_args(argv)
    apply()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
