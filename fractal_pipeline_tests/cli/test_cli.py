"""The dagster CLI and our own CLI, as subprocesses in a temporary DAGSTER_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.instance.ref import InstanceRef
from PIL import Image

from fractal_pipeline.fractals import FractalSpec, render_png

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRACTALS_", "FRACTAL_", "MINIO"))}
    env["DAGSTER_HOME"] = str(tmp_path / "home")
    env["COLUMNS"] = "200"  # rich tables: no wrapping in captured output
    (tmp_path / "home").mkdir(exist_ok=True)
    # Dagster prints a one-time telemetry notice on a new home; keep it out of the captured output.
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


def _run(args: list[str | Path], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_dagster_asset_materialize_cli(tmp_path: Path) -> None:
    env = _env(tmp_path)
    module = ["-m", "fractal_pipeline.definitions"]
    config = '{"ops": {"fractal_specs": {"config": {"count": 3, "seed": 2, "size": 64}}}}'
    specs = _run(
        [BIN / "dagster", "asset", "materialize", *module, "--select", "fractal_specs", "--config-json", config], env
    )
    assert specs.returncode == 0, specs.stderr[-2000:]
    with DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        keys = list(instance.get_dynamic_partitions("fractal_specs"))
    assert len(keys) == 3
    images = _run(
        [BIN / "dagster", "asset", "materialize", *module, "--select", "fractal_images",
         "--partition-range", f"{keys[0]}...{keys[-1]}"],
        env,
    )  # fmt: skip
    assert images.returncode == 0, images.stderr[-2000:]
    folder = Path(env["DAGSTER_HOME"]) / "fractals"
    for key in keys:
        assert (folder / "fractals" / f"{key}.png").read_bytes() == render_png(FractalSpec.from_key(key))
    collage = _run([BIN / "dagster", "asset", "materialize", *module, "--select", "fractal_collage"], env)
    assert collage.returncode == 0, collage.stderr[-2000:]
    with Image.open(folder / "collages" / "fractal_collage.png") as image:
        assert image.getbbox() is not None


def test_fractal_pipeline_run_prints_stored_keys(tmp_path: Path) -> None:
    env = _env(tmp_path)
    run = _run([BIN / "fractal-pipeline", "run", "--count", "4", "--seed", "8", "--size", "64", "--workers", "2"], env)
    assert run.returncode == 0, run.stderr
    printed = [line for line in run.stdout.splitlines() if line.startswith("fractals/")]
    assert len(printed) == 4
    folder = Path(env["DAGSTER_HOME"]) / "fractals"
    for key in printed:
        assert (folder / key).is_file()
    assert (folder / "collages" / "fractal_collage.png").is_file()
    assert "seed 8" in run.stderr
    # The render workers start early, while Dagster creates the images run: after the specs run ended,
    # before the images run started; both of the two asked for render.
    with DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        records = instance.fetch_materializations(AssetKey("fractal_images"), limit=10).records
        assert len(records) == 4
        images_run = instance.get_run_record_by_id(records[0].run_id)
        specs = instance.fetch_materializations(AssetKey("fractal_specs"), limit=1).records[0]
        specs_run = instance.get_run_record_by_id(specs.run_id)
        assert images_run is not None and images_run.start_time is not None
        assert specs_run is not None and specs_run.end_time is not None
        workers = {}
        for record in records:
            materialization = record.asset_materialization
            assert materialization is not None
            workers[materialization.metadata["worker"].value] = float(
                materialization.metadata["worker_started_at"].value
            )
        assert len(workers) == 2
        for started_at in workers.values():
            # (a process's start time, as /proc gives it, is known to ~10 ms)
            assert specs_run.end_time - 0.05 <= started_at < images_run.start_time


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--count", "0"], "error: --count: 0 is out of range"),
        (["--kinds", "dragn"], "did you mean 'dragon'"),
        (["--size", "5"], "size: 5 px is out of range"),
    ],
)
def test_fractal_pipeline_run_bad_input_is_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    run = _run([BIN / "fractal-pipeline", "run", *args], _env(tmp_path))
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], run.stderr


def test_kinds_and_render_commands(tmp_path: Path) -> None:
    env = _env(tmp_path)
    kinds = _run([BIN / "fractal-pipeline", "kinds"], env)
    assert kinds.returncode == 0 and "peano_gosper" in kinds.stdout and "koch_snowflake" in kinds.stdout
    out = tmp_path / "d.png"
    rendered = _run([BIN / "fractal-pipeline", "render", "dragon", "6", "-o", out, "--size", "64"], env)
    assert rendered.returncode == 0, rendered.stderr
    assert out.read_bytes() == render_png(FractalSpec("dragon", 6, size=64))
    bad = _run([BIN / "fractal-pipeline", "render", "dragon", "99"], env)
    assert bad.returncode == 2 and "depth: 99 is out of range" in bad.stderr
