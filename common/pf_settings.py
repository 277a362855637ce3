"""Prompt flow settings the project wants everywhere: no tracing service, no telemetry.

`make setup` runs this once (`python -m common.pf_settings`) so that `pf flow test` neither
starts a tracing service (14 s instead of 2 s) nor phones home. It honours PF_HOME_DIRECTORY.
"""
from __future__ import annotations

SETTINGS = {"trace.destination": "none", "telemetry.enabled": "false"}


def apply() -> None:
    from promptflow._sdk._configuration import Configuration  # heavy: imported only here

    config = Configuration.get_instance()
    for key, value in SETTINGS.items():
        config.set_config(key, value)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m common.pf_settings",
        description="Turn off Prompt flow's tracing service and telemetry (in PF_HOME_DIRECTORY or ~/.promptflow).",
    )
    parser.parse_args(argv)
    apply()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
