"""The run tags in fractal_pipeline/defs/tags.py are Dagster's own strings: an upgrade that renames one fails here."""

from __future__ import annotations

from pathlib import Path

import dagster_webserver
import pytest
from dagster._core.storage import tags as dagster_tags

from fractal_pipeline.defs import tags

#: Our name -> Dagster's constant in dagster._core.storage.tags.
DAGSTER_CONSTANTS = {
    "ASSET_PARTITION_RANGE_START": "ASSET_PARTITION_RANGE_START_TAG",
    "ASSET_PARTITION_RANGE_END": "ASSET_PARTITION_RANGE_END_TAG",
    "PARTITION_NAME": "PARTITION_NAME_TAG",
    "SENSOR_NAME": "SENSOR_NAME_TAG",
    "SCHEDULE_NAME": "SCHEDULE_NAME_TAG",
    "BACKFILL_ID": "BACKFILL_ID_TAG",
    "AUTOMATION_CONDITION": "AUTOMATION_CONDITION_TAG",
    "AUTO_MATERIALIZE": "AUTO_MATERIALIZE_TAG",
    "GRPC_INFO": "GRPC_INFO_TAG",
}


@pytest.mark.parametrize("ours", sorted(DAGSTER_CONSTANTS))
def test_each_dagster_tag_is_dagsters_constant(ours: str) -> None:
    assert getattr(tags, ours) == getattr(dagster_tags, DAGSTER_CONSTANTS[ours])


def test_the_ui_tag_is_the_one_the_dagster_ui_sets() -> None:
    # Dagster's Python code never names it: the UI's JavaScript sets it on runs launched from the UI.
    bundle = Path(dagster_webserver.__file__).parent / "webapp" / "build"
    assert any(f'"{tags.FROM_UI}"' in path.read_text(errors="ignore") for path in bundle.rglob("*.js"))


def test_every_dagster_string_in_the_module_is_checked() -> None:
    dagster_strings = {
        name
        for name, value in vars(tags).items()
        if name.isupper() and isinstance(value, str) and value.startswith(("dagster/", ".dagster/"))
    }
    assert dagster_strings == set(DAGSTER_CONSTANTS) | {"FROM_UI"}


def test_no_module_outside_instance_uses_dagster_internals() -> None:
    package = Path(tags.__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "instance" not in path.relative_to(package).parts[:1]
        and any(
            line.lstrip().startswith(("from dagster._", "import dagster._")) for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
