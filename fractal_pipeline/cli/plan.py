"""``run --dry-run``: the plan of a run and its predicted time and cost, as a table or JSON (formatting only)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.text import Text

from fractal_pipeline.cli import console as term
from fractal_pipeline.cli.fmt import print_table


def print_plan(plan: Any, as_json: bool) -> None:
    """Print a :class:`fractal_pipeline.runs.plan.RunPlan`: stdout holds the plan, nothing is run."""
    data = plan.to_json()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    numbers = ("segments", "pixels", "predicted s")
    rows = [
        [
            spec["key"],
            f"{spec['segments']:,}",
            f"{spec['pixels']:,}",
            "yes" if spec["stored"] else "",
            "" if spec["stored"] else f"{spec['predicted_render_s']:.3f}",
        ]
        for spec in data["specs"]
    ]
    print_table(["key", *numbers[:2], "stored", numbers[2]], rows, right=numbers)
    stored = sum(spec["stored"] for spec in data["specs"])
    run = data["run"]
    lines = [
        f"seed {data['seed']}: `{data['command']}` runs this plan",
        f"{len(data['specs'])} specs, {stored} already stored; "
        + (f"one images run over {run['first']}...{run['last']} renders {run['renders']}" if run else "no images run"),
        f"to render: {data['segments']:,} segments, {data['pixels'] / 1e6:,.1f} Mpx",
        f"predicted render + encode: {data['predicted_render_s']:,.2f} CPU s on {data['backend']} "
        f"(budget {data['budget_s']:,.0f} s, FRACTALS_MAX_BATCH_SECONDS)",
        "predicted wall: " + ", ".join(f"{name} {value:,.2f} s" for name, value in data["predicted_wall_s"].items()),
        "predicted cost: " + ", ".join(f"{name} {_usd(value)}" for name, value in data["cost_usd"].items()),
    ]
    lines += [f"coefficients ({name}): {basis}" for name, basis in data["coefficients"].items() if name != "fargate"]
    if data["over_budget"]:
        lines.append(plan.over_budget)
    for line in lines:
        term.console.print(Text(line), highlight=False, soft_wrap=True)


def _usd(value: float) -> str:
    """Dollars to the cent, or to two significant digits under a cent (never in exponent notation)."""
    if value <= 0:
        return "$0"
    return f"${value:,.{max(2, 1 - math.floor(math.log10(value)))}f}"
