"""Settings of the sensors and the schedule, read from the environment; each bad value is one line naming it."""

import math
import os
from dataclasses import dataclass, field

import dagster as dg

from fractal_pipeline.cost import BUDGET_ENV, DEFAULT_MAX_BATCH_SECONDS, Prices
from fractal_pipeline.specfiles.queue import QUEUE_ENV, validate_queue

DEFAULT_INTERVAL_S = 30
DEFAULT_CRON = "0 6 * * *"
DEFAULT_PREFIX = "specs/"
#: How often queue mode also lists the prefix, to catch files no notification announced.
DEFAULT_RECONCILE_S = 900
PRICES_ENV = "FRACTALS_PRICES"


@dataclass(frozen=True)
class CostSettings:
    """The batch budget, the prices the cost is figured at, and the backend that renders a batch."""

    max_batch_s: float = DEFAULT_MAX_BATCH_SECONDS
    prices: Prices = field(default_factory=Prices)
    backend: str = "local"


def max_batch_seconds_from_env() -> float:
    """``FRACTALS_MAX_BATCH_SECONDS``: the predicted render CPU seconds one batch may take."""
    raw = (os.environ.get(BUDGET_ENV) or "").strip()
    if not raw:
        return DEFAULT_MAX_BATCH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{BUDGET_ENV}: {raw!r} is not a positive number of seconds; e.g. {DEFAULT_MAX_BATCH_SECONDS:.0f}"
        )
    return value


def prices_from_env() -> Prices:
    """``FRACTALS_PRICES``: ``name=value`` pairs, comma-separated, replacing :class:`Prices` defaults."""
    raw = (os.environ.get(PRICES_ENV) or "").strip()
    values: dict[str, float] = {}
    for pair in filter(None, (part.strip() for part in raw.split(","))):
        name, _, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{PRICES_ENV}: {pair!r} is not name=positive number; e.g. lambda_gb_s=0.0000166667")
        values[name.strip()] = number
    try:
        return Prices().with_values(values)
    except ValueError as exc:
        raise ValueError(f"{PRICES_ENV}: {exc}") from None


def cost_settings_from_env(backend: str = "local") -> CostSettings:
    """The budget and prices from the environment, for batches rendered on ``backend``."""
    return CostSettings(max_batch_seconds_from_env(), prices_from_env(), backend)


def env_int(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{name}: {raw!r} is not a whole number of seconds; set it to one (e.g. {name}={default}) or unset it"
        ) from None
    if value < low:
        raise ValueError(f"{name}: {value} is too small; use at least {low}")
    return value


def specs_queue_from_env() -> str | None:
    """``FRACTALS_SPECS_QUEUE``: the SQS queue (URL, ARN or name) of the bucket's notifications, or None."""
    value = (os.environ.get(QUEUE_ENV) or "").strip()
    return validate_queue(value) if value else None


def specs_prefix_from_env() -> str:
    """``FRACTALS_SPECS_PREFIX`` (default ``specs/``), always ending in ``/``."""
    prefix = os.environ.get("FRACTALS_SPECS_PREFIX", DEFAULT_PREFIX).strip().lstrip("/")
    if not prefix:
        raise ValueError("FRACTALS_SPECS_PREFIX: is empty; use a folder such as 'specs/' (not the whole bucket)")
    return prefix if prefix.endswith("/") else prefix + "/"


def sensor_interval_from_env() -> int:
    """``FRACTALS_SENSOR_INTERVAL``: seconds between sensor ticks (default 30)."""
    return env_int("FRACTALS_SENSOR_INTERVAL", DEFAULT_INTERVAL_S, 1)


def reconcile_seconds_from_env() -> int:
    """``FRACTALS_SPECS_RECONCILE_S``: seconds between queue mode's reconciling listings (default 900)."""
    return env_int("FRACTALS_SPECS_RECONCILE_S", DEFAULT_RECONCILE_S, 1)


def schedule_cron_from_env() -> str:
    """``FRACTALS_SCHEDULE_CRON`` (default 06:00 daily), checked the way Dagster checks a schedule's cron."""
    cron = (os.environ.get("FRACTALS_SCHEDULE_CRON") or DEFAULT_CRON).strip()
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=cron, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError:
        raise ValueError(
            f"FRACTALS_SCHEDULE_CRON: {cron!r} is not a cron expression; e.g. {DEFAULT_CRON!r} (06:00 daily)"
        ) from None
    return cron
