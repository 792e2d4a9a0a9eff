"""`run --dry-run`, the budget on `run`, and predicted vs actual in `events`: the CLI as a subprocess."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef

from fractal_pipeline.defs import tags
from fractal_pipeline.inspect.prediction import NOTHING_TO_PREDICT

from .test_cli import BIN, _env, _run

RUN = [BIN / "fractal-pipeline", "run", "--count", "6", "--seed", "3", "--size", "64", "--workers", "2"]


def _instance(env: dict[str, str]) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"]))


def test_dry_run_prints_the_plan_and_records_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    dry = _run([*RUN, "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert len(plan["specs"]) == 6 and not any(spec["stored"] for spec in plan["specs"])
    assert plan["predicted_render_s"] > 0 and plan["seed"] == 3
    assert set(plan["predicted_wall_s"]) >= {"local", "lambda", "fargate"}
    assert set(plan["cost_usd"]) >= {"lambda", "fargate"}
    assert plan["run"]["renders"] == 6 and "--seed 3" in plan["command"]
    with _instance(env) as instance:
        assert list(instance.get_dynamic_partitions("fractal_specs")) == []
        assert instance.get_runs_count() == 0
    assert not (Path(env["DAGSTER_HOME"]) / "fractals" / "fractals").exists()

    text = _run([*RUN, "--dry-run"], env)
    assert text.returncode == 0, text.stderr
    for expected in ("6 specs, 0 already stored", "predicted render + encode", "predicted cost: lambda $"):
        assert expected in text.stdout
    # The same dollars as the JSON, to two significant digits under a cent, never in exponent notation.
    (cost_line,) = [line for line in text.stdout.splitlines() if line.startswith("predicted cost:")]
    lambda_usd = plan["cost_usd"]["lambda"]
    shown = cost_line.split("lambda $", 1)[1].split(",")[0]
    assert "e" not in shown.lower() and abs(float(shown) - lambda_usd) <= max(0.005, lambda_usd * 0.06)


def test_run_records_its_prediction_and_events_compares_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    ran = _run(RUN, env)
    assert ran.returncode == 0, ran.stderr
    with _instance(env) as instance:
        records = instance.fetch_materializations(AssetKey("fractal_images"), limit=10).records
        run_id = records[0].run_id
        run = instance.get_run_by_id(run_id)
        assert run is not None and float(run.tags[tags.PREDICTED_RENDER_S]) > 0
        specs = instance.fetch_materializations(AssetKey("fractal_specs"), limit=1).records[0]
        assert specs.asset_materialization is not None
        assert specs.asset_materialization.metadata["predicted_render_s"].value > 0
        specs_run = specs.run_id
    events = _run([BIN / "fractal-pipeline", "events", run_id], env)
    assert events.returncode == 0, events.stderr
    assert events.stdout.strip().splitlines()[-1].startswith("predicted ")
    as_json = json.loads(_run([BIN / "fractal-pipeline", "events", run_id, "--json"], env).stdout)
    assert as_json["prediction"]["predicted_render_s"] > 0 and as_json["prediction"]["actual_render_s"] > 0
    specs_events = _run([BIN / "fractal-pipeline", "events", specs_run], env)  # a run that renders nothing
    assert specs_events.stdout.strip().splitlines()[-1] == NOTHING_TO_PREDICT

    # The same specs again: all stored, so nothing to render or pay; the six recorded partitions calibrate.
    again = json.loads(_run([*RUN, "--dry-run", "--json"], env).stdout)
    assert all(spec["stored"] for spec in again["specs"]) and again["run"] is None
    assert again["predicted_render_s"] == 0
    assert "scaled to 6 partitions recorded locally" in again["coefficients"]["local"]


def test_run_over_the_budget_exits_2_in_one_line_unless_yes(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "FRACTALS_MAX_BATCH_SECONDS": "0.000001"}
    refused = _run(RUN, env)
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "raise FRACTALS_MAX_BATCH_SECONDS" in lines[0] and "--yes" in lines[0], refused.stderr
    assert refused.stdout == ""
    with _instance(env) as instance:
        assert instance.get_runs_count() == 0
    dry = _run([*RUN, "--dry-run"], env)
    assert dry.returncode == 0 and "over the budget" in dry.stdout
    forced = _run([*RUN, "--yes"], env)
    assert forced.returncode == 0, forced.stderr
    assert len([line for line in forced.stdout.splitlines() if line.startswith("fractals/")]) == 6


def test_bad_budget_and_json_without_dry_run_are_one_line(tmp_path: Path) -> None:
    bad = _run(RUN, {**_env(tmp_path), "FRACTALS_MAX_BATCH_SECONDS": "soon"})
    assert bad.returncode == 2
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "FRACTALS_MAX_BATCH_SECONDS: 'soon' is not a positive number" in lines[0]
    json_only = _run([*RUN, "--json"], _env(tmp_path))
    assert json_only.returncode == 2 and "--json: only with --dry-run" in json_only.stderr


def test_the_command_that_fills_the_gaps_of_a_batch_over_the_budget_keeps_yes(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "FRACTALS_MAX_BATCH_SECONDS": "0.000001"}
    folder = Path(env["DAGSTER_HOME"]) / "fractals" / "fractals"
    assert _run([*RUN, "--yes"], env).returncode == 0
    victim = sorted(folder.glob("*.png"))[0]
    victim.unlink()
    victim.mkdir()  # a folder stands where its PNG must go: that partition fails
    failed = _run([*RUN, "--yes"], env)
    assert failed.returncode == 1, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    command = re.search(r"`(fractal-pipeline run [^`]*)` renders only those", line)
    assert command and command.group(1).endswith(" --yes"), line
    victim.rmdir()
    again = _run([BIN / "fractal-pipeline", *shlex.split(command.group(1))[1:]], env)  # as printed
    assert again.returncode == 0, again.stderr
    assert victim.is_file()
