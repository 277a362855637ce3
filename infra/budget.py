"""Optional monthly cost budget on the resource group, with e-mail alerts."""
from __future__ import annotations

import datetime as dt

import pulumi
from pulumi_azure_native import consumption

from infra.stack_config import InfraConfig


def first_of_month(today: dt.date | None = None) -> str:
    """Azure wants budgets to start on the first day of a month, not before the current one."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return f"{today.year:04d}-{today.month:02d}-01T00:00:00Z"


def create_budget(cfg: InfraConfig, name: str, resource_group_id: pulumi.Input[str]) -> consumption.Budget:
    emails = list(cfg.budget_emails)
    return consumption.Budget(
        "budget",
        budget_name=name,
        scope=resource_group_id,
        amount=cfg.budget_amount,
        category="Cost",
        time_grain="Monthly",
        time_period=consumption.BudgetTimePeriodArgs(start_date=first_of_month()),
        notifications={
            "actual-80-percent": consumption.NotificationArgs(
                enabled=True, operator="GreaterThan", threshold=80, threshold_type="Actual",
                contact_emails=emails,
            ),
            "forecast-100-percent": consumption.NotificationArgs(
                enabled=True, operator="GreaterThan", threshold=100, threshold_type="Forecasted",
                contact_emails=emails,
            ),
        },
        # The start date is fixed when the budget is created; later runs must not move it.
        opts=pulumi.ResourceOptions(ignore_changes=["time_period"]),
    )
