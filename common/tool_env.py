"""The environment every command of the project runs in: telemetry off, no tool state in $HOME.

MLflow writes `~/.config/mlflow/telemetry.json` and reports usage unless told not to; the HF hub,
vLLM and Prompt flow's Azure Monitor exporter phone home too. `common.cli.run_cli` calls `apply()`
before a command's `main`, so `python -m ...` in the activated virtual environment behaves as it
does under `make`, and every process a command starts (the trainer, the server, `pf`) inherits the
settings. A value the caller exported wins (`MLFLOW_DISABLE_TELEMETRY=false` opts back in).

Prompt flow's own options (no tracing service, telemetry off) are not environment variables: they
live in the repository's `pf.yaml`, which Prompt flow reads from the working directory upward.

By default the Azure SDK's credential chain is not printed: a failed sign-in logs a 14-line
warning naming every credential it tried, before the command's own one-line error. `--verbose`
(`common.cli.add_verbose_argument`) shows it, and which credential signed in.
"""
from __future__ import annotations

import logging
import os

OFFLINE_ENV = {
    # Prompt flow's Azure Monitor exporter, built even with telemetry off: no control-plane polling of
    # settings.sdk.monitor.azure.com, no statsbeat (common/pf_settings.py has the story)
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
}
ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",  # else ~/.config/vllm/usage_stats.json and a report to vLLM's server
    "DO_NOT_TRACK": "true",  # the cross-tool switch (MLflow, HF hub, vLLM honour it)
    **OFFLINE_ENV,
}
SDK_CREDENTIAL_LOGGER = "azure.identity"


def apply() -> None:
    """Set ENV where the caller has not, and keep the SDK's credential-chain dump out of errors."""
    for name, value in ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger(SDK_CREDENTIAL_LOGGER).setLevel(logging.ERROR)


def show_sdk_logs() -> None:
    """`--verbose`: the credential chain's attempts and the one that signed in, on stderr."""
    logger = logging.getLogger(SDK_CREDENTIAL_LOGGER)
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
