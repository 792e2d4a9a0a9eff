"""The Dagster pipeline on embedded defaults: temp instance, local folder store."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from fractal_pipeline.definitions import build_definitions
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.fractals import FractalSpec, render_png

from ..conftest import failure_message, materialize_collage, materialize_images, materialize_specs

IMAGES = dg.AssetKey("fractal_images")
#: A spec list as an earlier version pickled it (the fractal_specs asset's output, seed 7, 64 px).
OLD_SPECS_PICKLE = Path(__file__).parents[1] / "data" / "fractal_specs.pickle"
OLD_SPECS = [FractalSpec("levy_c", 11, 64), FractalSpec("dragon", 12, 64), FractalSpec("peano", 3, 64)]


def test_definitions_load_and_validate(local_env: Path) -> None:
    from fractal_pipeline import definitions

    dg.Definitions.validate_loadable(definitions.defs)
    keys = {key.to_user_string() for key in definitions.defs.resolve_all_asset_keys()}
    assert keys == {"fractal_specs", "fractal_images", "fractal_collage"}


def test_a_spec_list_pickled_by_an_earlier_version_still_loads(local_env: Path, instance: dg.DagsterInstance) -> None:
    stored = Path(instance.storage_directory()) / "fractal_specs"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(OLD_SPECS_PICKLE.read_bytes())
    loaded = build_definitions("local").load_asset_value("fractal_specs", instance=instance)
    assert loaded == OLD_SPECS
    assert [spec.key for spec in loaded] == ["levy_c_11-64px", "dragon_12-64px", "peano_3-64px"]


def test_unknown_deployment_is_one_clear_error(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRACTAL_DEPLOYMENT", "moon")
    with pytest.raises(ValueError, match="FRACTAL_DEPLOYMENT"):
        build_definitions()


def test_specs_images_collage_end_to_end(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")
    specs_result = materialize_specs(defs, instance, count=6, seed=3, size=128)
    assert specs_result.success
    specs = specs_result.output_for_node("fractal_specs")
    keys = [spec.key for spec in specs]
    assert list(instance.get_dynamic_partitions(PARTITIONS_NAME)) == keys
    meta = specs_result.asset_materializations_for_node("fractal_specs")[0].metadata
    assert meta["count"].value == 6 and meta["new_keys"].value == 6 and meta["seed"].value == 3

    result = materialize_images(defs, instance, keys[0], keys[-1])
    assert result.success, failure_message(result)
    mats = result.asset_materializations_for_node("fractal_images")
    assert sorted(m.partition for m in mats) == sorted(keys)  # exactly one per partition
    for mat in mats:
        assert mat.partition is not None
        path = Path(mat.metadata["location"].value)
        assert path == (local_env / "fractals" / f"{mat.partition}.png").resolve()
        data = path.read_bytes()
        assert data == render_png(FractalSpec.from_key(mat.partition))  # same spec, same bytes
        assert mat.metadata["bytes"].value == len(data)
        assert mat.metadata["segments"].value == FractalSpec.from_key(mat.partition).segments
        assert mat.metadata["render_ms"].value > 0
        assert "data:image/png;base64," in mat.metadata["thumbnail"].value
    assert instance.get_materialized_partitions(IMAGES) == set(keys)
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]

    collage = materialize_collage(defs, instance)
    assert collage.success, failure_message(collage)
    collage_meta = collage.asset_materializations_for_node("fractal_collage")[0].metadata
    assert collage_meta["tiles"].value == 6
    with Image.open(local_env / "collages" / "fractal_collage.png") as image:
        assert image.width > 100 and image.getbbox() is not None


def test_partition_registration_is_idempotent(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")
    first = materialize_specs(defs, instance, count=5, seed=11, size=64)
    again = materialize_specs(defs, instance, count=5, seed=11, size=64)
    assert first.success and again.success
    assert again.asset_materializations_for_node("fractal_specs")[0].metadata["new_keys"].value == 0
    partitions = instance.get_dynamic_partitions(PARTITIONS_NAME)
    assert len(partitions) == len(set(partitions)) == 5


def test_fifty_partition_range_is_one_run(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")
    assert materialize_specs(defs, instance, count=50, seed=7, size=48, palette=None).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    assert len(keys) == 50
    runs_before = len(instance.get_runs())
    result = materialize_images(defs, instance, keys[0], keys[-1])
    assert result.success, failure_message(result)
    assert len(instance.get_runs()) == runs_before + 1
    mats = result.asset_materializations_for_node("fractal_images")
    assert len(mats) == 50 and {m.partition for m in mats} == set(keys)
    assert len({m.metadata["location"].value for m in mats}) == 50  # each partition its own metadata
    records = instance.fetch_materializations(IMAGES, limit=1000).records
    assert len(records) == 50  # no second, empty materialization per partition
    assert len(list((local_env / "fractals").glob("*.png"))) == 50


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"count": 0}, "count:"),
        ({"count": 10_001}, "count:"),
        ({"kinds": ["dragn"]}, "did you mean 'dragon'"),
        ({"palette": "plaid"}, "palette:"),
        ({"size": 9000}, "size:"),
    ],
)
def test_bad_config_fails_with_core_message_and_touches_nothing(
    local_env: Path, instance: dg.DagsterInstance, config: dict[str, object], field: str
) -> None:
    defs = build_definitions("local")
    assert materialize_specs(defs, instance, count=2, seed=1, size=32).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    assert materialize_images(defs, instance, keys[0], keys[-1]).success
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (local_env / "fractals").iterdir()}

    result = materialize_specs(defs, instance, **config)
    assert not result.success
    message = failure_message(result)
    assert field in message
    assert "\n" not in message.strip()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (local_env / "fractals").iterdir()}
    assert after == before
    assert list(instance.get_dynamic_partitions(PARTITIONS_NAME)) == keys


def test_rerendering_a_partition_is_idempotent(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")
    assert materialize_specs(defs, instance, count=3, seed=5, size=64).success
    keys = list(instance.get_dynamic_partitions(PARTITIONS_NAME))
    assert materialize_images(defs, instance, keys[0], keys[-1]).success
    first = {k: (local_env / "fractals" / f"{k}.png").read_bytes() for k in keys}
    assert materialize_images(defs, instance, keys[1], keys[1], workers=1).success
    assert {k: (local_env / "fractals" / f"{k}.png").read_bytes() for k in keys} == first
    with Image.open(io.BytesIO(first[keys[1]])) as image:
        assert image.size == (64, 64)


def test_collage_without_images_fails_clearly(local_env: Path, instance: dg.DagsterInstance) -> None:
    defs = build_definitions("local")
    result = materialize_collage(defs, instance)
    assert not result.success
    assert "fractal_images: no stored images" in failure_message(result)
