"""S3 backend against moto's server on 127.0.0.1, over real HTTP (boto3 and the aws CLI)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.fractals import FractalSpec, render_png
from fractal_pipeline.store import S3Store, StoreConfig, StoreError, image_key
from fractal_pipeline.workers.pool import stored_locations

from ..conftest import failure_message, materialize_collage, materialize_images, materialize_specs, s3_client

pytestmark = pytest.mark.s3
BIN = Path(sys.executable).parent


def _keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_pipeline_writes_pngs_specs_and_collage_to_the_bucket(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    defs = build_definitions()  # FRACTALS_BUCKET set -> the "s3" deployment
    specs_result = materialize_specs(defs, instance, count=4, seed=9, size=96)
    assert specs_result.success, failure_message(specs_result)
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    pickled = [k for k in _keys(endpoint, bucket, "dagster/") if k.endswith("fractal_specs")]
    assert len(pickled) == 1  # S3PickleIOManager stored the spec list
    body = s3_client(endpoint).get_object(Bucket=bucket, Key=pickled[0])["Body"].read()
    assert [s.key for s in pickle.loads(body)] == keys

    result = materialize_images(defs, instance, keys[0], keys[-1])
    assert result.success, failure_message(result)
    assert sorted(_keys(endpoint, bucket, "fractals/")) == sorted(f"fractals/{k}.png" for k in keys)
    for mat in result.asset_materializations_for_node("fractal_images"):
        assert mat.metadata["location"].value == f"s3://{bucket}/fractals/{mat.partition}.png"
    for key in keys:
        body = s3_client(endpoint).get_object(Bucket=bucket, Key=f"fractals/{key}.png")["Body"].read()
        assert body == render_png(FractalSpec.from_key(key))

    collage = materialize_collage(defs, instance)
    assert collage.success, failure_message(collage)
    data = s3_client(endpoint).get_object(Bucket=bucket, Key="collages/fractal_collage.png")["Body"].read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.getbbox() is not None


def test_a_spec_list_pickled_into_the_bucket_by_an_earlier_version_still_loads(
    s3_env: dict[str, str], instance: dg.DagsterInstance
) -> None:
    from .test_pipeline import OLD_SPECS, OLD_SPECS_PICKLE

    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    s3_client(endpoint).put_object(Bucket=bucket, Key="dagster/fractal_specs", Body=OLD_SPECS_PICKLE.read_bytes())
    assert build_definitions().load_asset_value("fractal_specs", instance=instance) == OLD_SPECS


def test_minio_endpoint_is_an_alias(
    s3_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
    defs = build_definitions()
    assert materialize_specs(defs, instance, count=1, seed=1, kinds=["dragon"], size=32).success
    (key,) = instance.get_dynamic_partitions(PARTITIONS_NAME)
    assert materialize_images(defs, instance, key, key, workers=1).success
    assert _keys(endpoint, bucket, "fractals/") == [f"fractals/{key}.png"]


def test_missing_bucket_fails_first_step_naming_the_variable(
    s3_env: dict[str, str], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRACTALS_BUCKET", "no-such-bucket-here")
    result = materialize_specs(build_definitions(), instance, count=2)
    assert not result.success
    message = failure_message(result)
    assert message.startswith("FRACTALS_BUCKET: bucket 'no-such-bucket-here' does not exist")
    assert "\n" not in message
    assert instance.get_dynamic_partitions(PARTITIONS_NAME) == []


def test_store_check_names_the_setting(s3_env: dict[str, str]) -> None:
    with pytest.raises(StoreError, match=r"^AWS_ENDPOINT_URL: cannot reach S3"):
        S3Store("b", endpoint_url="http://127.0.0.1:9", region_name="us-east-1").check()


def test_a_stopping_batch_finds_its_unreported_pngs_in_s3_and_claims_none_when_s3_is_down(
    s3_env: dict[str, str],
) -> None:
    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    store = S3Store(bucket, endpoint_url=endpoint)
    store.put(image_key("dragon_3-64px"), render_png(FractalSpec.from_key("dragon_3-64px")))
    assert stored_locations(store.config, ["dragon_3-64px", "dragon_4-64px"]) == {
        "dragon_3-64px": f"s3://{bucket}/fractals/dragon_3-64px.png"
    }
    down = StoreConfig(bucket=bucket, endpoint_url="http://127.0.0.1:9", region_name="us-east-1")  # nothing listens
    assert stored_locations(down, ["dragon_3-64px"]) == {}


def test_cli_run_prints_the_keys_aws_s3_ls_lists(s3_env: dict[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_env["AWS_ENDPOINT_URL"], s3_env["FRACTALS_BUCKET"]
    env = {**os.environ, **s3_env, "DAGSTER_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [BIN / "fractal-pipeline", "run", "--count", "5", "--seed", "4", "--size", "64", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    printed = [line for line in run.stdout.splitlines() if line.startswith("fractals/")]
    assert len(printed) == 5
    assert "collages/fractal_collage.png" in run.stdout
    listing = subprocess.run(
        [BIN / "aws", "s3", "ls", f"s3://{bucket}/fractals/", "--endpoint-url", endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listed = sorted(f"fractals/{line.split()[-1]}" for line in listing.stdout.splitlines() if line.strip())
    assert listed == sorted(printed)
