"""The batch budget and the prediction on sensor and schedule batches, against moto's S3 server over HTTP."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import dagster as dg
import pytest

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs import tags
from fractal_pipeline.defs.cost import RecordedPrediction
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.schedules import random_fractals_schedule
from fractal_pipeline.defs.settings import CostSettings

from ..conftest import QUIET, asset_job
from .test_sensor import FakeDaemon, exists, get_json, put

pytestmark = pytest.mark.s3
DEEP = "kind,depth,size\ndragon,8,64\nlevy_c,6,64\n"
TINY = CostSettings(max_batch_s=1e-6)


def test_a_file_over_the_budget_renders_nothing_and_its_report_says_what_to_raise(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    etag = put(s3_env, "specs/deep.csv", DEEP)
    daemon = FakeDaemon(instance, s3_env)
    refused = daemon.tick(cost=TINY)
    assert refused.run_requests == [] and not refused.dynamic_partitions_requests
    report = get_json(s3_env, "specs/_rejected/deep.csv.json")
    assert report["error"].startswith("FRACTALS_MAX_BATCH_SECONDS: the batch's predicted render time")
    assert report["budget_s"] == TINY.max_batch_s and report["budget_variable"] == "FRACTALS_MAX_BATCH_SECONDS"
    assert report["prediction"]["predicted_render_s"] > 0 and report["prediction"]["specs_to_render"] == 2
    assert set(report["prediction"]["cost_usd"]) == {"lambda", "fargate"}
    assert report["keys"] == ["dragon_8-64px", "levy_c_6-64px"] and report["etag"] == etag
    assert list(instance.get_dynamic_partitions(PARTITIONS_NAME)) == []
    assert daemon.tick(cost=TINY).run_requests == []  # not read again every tick

    # The budget is raised (the code server reloads with the new variable); the identical file is uploaded again.
    time.sleep(1.1)  # a new LastModified second, as any later upload has
    assert put(s3_env, "specs/deep.csv", DEEP) == etag
    rendered = daemon.tick(cost=CostSettings())
    assert [run.run_key for run in rendered.run_requests] == [f"specs/deep.csv@{etag}"]
    assert not exists(s3_env, "specs/_rejected/deep.csv.json")  # a clean file leaves no report
    assert daemon.tick(cost=CostSettings()).run_requests == []


def test_a_files_run_carries_its_prediction_and_the_check_compares_it(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    put(s3_env, "specs/small.csv", "kind,depth,size\nsierpinski,3,64\ndragon,6,64\n")
    daemon = FakeDaemon(instance, s3_env)
    (request,) = daemon.tick(cost=CostSettings()).run_requests
    predicted = RecordedPrediction.from_tags(request.tags)
    assert predicted is not None and predicted.render_s > 0
    assert set(predicted.cost_usd) == {"lambda", "fargate"} and predicted.basis.startswith("local: built-in")

    result = asset_job(build_definitions()).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("fractal_images")],
        tags=request.tags,
        run_config={**QUIET, **request.run_config},
        raise_on_error=False,
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    metadata = check.metadata
    assert metadata["prediction"].value.startswith(f"predicted {predicted.render_s:.2f} s of render CPU, actual ")
    assert metadata["predicted_render_s"].value == predicted.render_s
    assert metadata["actual_render_s"].value > 0


def test_a_schedule_tick_over_the_budget_is_skipped_with_the_reason(instance: dg.DagsterInstance) -> None:
    when = datetime(2025, 1, 2, 6, tzinfo=timezone.utc)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
    skipped = random_fractals_schedule(cost=TINY).evaluate_tick(context)
    assert skipped.run_requests == [] or skipped.run_requests is None
    assert skipped.skip_message is not None
    assert skipped.skip_message.startswith(f"seed {int(when.timestamp()) & 0xFFFFFFFF}: FRACTALS_MAX_BATCH_SECONDS:")

    launched = random_fractals_schedule().evaluate_tick(context)
    (request,) = launched.run_requests or []
    assert float(request.tags[tags.PREDICTED_RENDER_S]) > 0
