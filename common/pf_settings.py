"""Prompt flow settings the project wants everywhere: no tracing service, no telemetry, offline.

`make setup` runs this once (`python -m common.pf_settings`) so that `pf flow test` neither
starts a tracing service (14 s instead of 2 s) nor phones home. It honours PF_HOME_DIRECTORY.

OFFLINE_ENV is for the environment of Prompt flow processes (no pf.yaml setting covers it):
promptflow's telemetry handler builds an `azure-monitor-opentelemetry-exporter` exporter even with
telemetry off, and every exporter starts a control-plane client that polls
settings.sdk.monitor.azure.com and retries ("OneSettings CHANGE request failed ... Retrying").
The exporter reads `APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED` (its `_configuration/_state.py`) and
`APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL` (its statsbeat, which reports to Azure too).
`python -m flows.chat_page` sets them; export them in a shell that runs `pf` by hand.
"""
from __future__ import annotations

SETTINGS = {"trace.destination": "none", "telemetry.enabled": "false"}
OFFLINE_ENV = {
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
}


def apply() -> None:
    from promptflow._sdk._configuration import Configuration  # heavy: imported only here

    config = Configuration.get_instance()
    for key, value in SETTINGS.items():
        config.set_config(key, value)


def main(argv: list[str] | None = None) -> int:
    from common.cli import ArgumentParser

    parser = ArgumentParser(
        prog="python -m common.pf_settings",
        description="Turn off Prompt flow's tracing service and telemetry (in PF_HOME_DIRECTORY or ~/.promptflow).",
    )
    parser.parse_args(argv)
    apply()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
