"""A spec file's report: ``<prefix>_rejected/<file>.json`` for rejected rows, an unreadable file, or a batch
over the budget; and the sensor's log line for every file."""

import json
from collections.abc import Mapping
from typing import Any

import dagster as dg

from fractal_pipeline.cost import BUDGET_ENV, Prediction
from fractal_pipeline.defs.sensors.cursor import etag, utc
from fractal_pipeline.specfiles.parse import SpecFile

REJECTED_DIR = "_rejected/"


def rejected_key(prefix: str, key: str) -> str:
    """Where the report of ``key`` goes: ``<prefix>_rejected/<name relative to prefix>.json``."""
    return f"{prefix}{REJECTED_DIR}{key[len(prefix) :]}.json"


def _predicted(prediction: Prediction | None) -> str:
    if prediction is None:
        return ""
    return f"; predicted {prediction.predicted_render_s:,.2f} s of render CPU, " + ", ".join(
        f"{backend} ${cost:,.4f}" for backend, cost in prediction.cost_usd.items()
    )


def write_report(
    context: dg.SensorEvaluationContext,
    client: Any,
    bucket: str,
    prefix: str,
    obj: Mapping[str, Any],
    parsed: SpecFile,
    prediction: Prediction | None = None,
    refused: str | None = None,
    budget_s: float | None = None,
) -> None:
    """Log the outcome; write (or clear) the ``_rejected/`` report object.

    ``refused`` is why a file of valid specs renders nothing (its batch is over the budget): the report
    then gives the ``prediction``, the budget and the variable to raise.
    """
    key = obj["Key"]
    report_key = rejected_key(prefix, key)
    if parsed.clean and refused is None:
        client.delete_object(Bucket=bucket, Key=report_key)
        context.log.info(f"s3://{bucket}/{key}: {len(parsed.specs)} specs{_predicted(prediction)}")
        return
    body = {**parsed.report(), "etag": etag(obj), "last_modified": utc(obj["LastModified"]).isoformat()}
    if prediction is not None:
        body["prediction"] = prediction.to_json()
    if refused is not None:
        body.update(error=refused, budget_s=budget_s, budget_variable=BUDGET_ENV)
    client.put_object(
        Bucket=bucket,
        Key=report_key,
        Body=json.dumps(body, indent=1).encode(),
        ContentType="application/json",
    )
    where = f"s3://{bucket}/{report_key}"
    error = refused or parsed.error
    if error:
        context.log.warning(f"s3://{bucket}/{key}: skipped, {error} (report {where})")
        return
    lines = "; ".join(f"line {row.line}: {row.reason}" for row in parsed.rejected[:5])
    more = f"; and {len(parsed.rejected) - 5} more" if len(parsed.rejected) > 5 else ""
    context.log.warning(
        f"s3://{bucket}/{key}: {len(parsed.specs)} specs, {len(parsed.rejected)} rows rejected "
        f"(report {where}): {lines}{more}{_predicted(prediction)}"
    )
