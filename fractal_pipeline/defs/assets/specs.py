"""``fractal_specs``: a batch of distinct random specs, registered as partitions."""

import secrets

import dagster as dg
from pydantic import Field

from fractal_pipeline.defs.assets.common import GROUP, OWNERS, one_line_failure
from fractal_pipeline.defs.batch_plan import partition_range
from fractal_pipeline.defs.cancel import CancelWatch
from fractal_pipeline.defs.cost import cost_model, predict_specs, prediction_markdown
from fractal_pipeline.defs.metadata import specs_table
from fractal_pipeline.defs.partitions import PARTITIONS_NAME
from fractal_pipeline.defs.resources import FractalStoreResource, RenderBackendResource
from fractal_pipeline.defs.settings import cost_settings_from_env
from fractal_pipeline.fractals import DEFAULT_PALETTE, DEFAULT_SIZE, MAX_SPECS, FractalSpec, InvalidSpec, random_specs
from fractal_pipeline.store import StoreError


class FractalSpecsConfig(dg.Config):
    """Which random specs to generate."""

    count: int = Field(default=12, description=f"How many distinct specs (1..{MAX_SPECS:,})")
    seed: int | None = Field(default=None, description="Random seed; unset = a fresh one (recorded in metadata)")
    kinds: list[str] | None = Field(default=None, description="Only these kinds (default: all 26)")
    size: int = Field(default=DEFAULT_SIZE, description="Image edge in pixels (16..8192)")
    palette: str | None = Field(
        default=DEFAULT_PALETTE, description="rainbow, fire, ice, forest or mono; null = random per spec"
    )


@dg.asset(
    group_name=GROUP,
    kinds={"python"},
    owners=OWNERS,
    description=(
        "A batch of distinct random fractal specs (kind, depth, size, palette). Registers one "
        "`fractal_specs` dynamic partition per new spec key, so `fractal_images` can render them.\n\n"
        "Materialize it from the Launchpad with e.g. `count: 20` (and optionally `seed`, `kinds`, `size`, "
        "`palette`). Metadata: `count`, `seed` (re-use it to get the same list), `new_keys` (partitions "
        "added), `keys`, `specs`, a table of the batch, and the batch's predicted render time and cost "
        "(`predicted_render_s`, `predicted_wall_s`, `cost_usd`, `prediction`: the specs not stored yet; docs/cost.md)."
    ),
    metadata={
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn("key", "string", description="Partition key, e.g. `dragon_12` or `levy_c_10-512px-ice`"),
                dg.TableColumn("kind", "string", description="One of the 26 L-system kinds (`fractal-pipeline kinds`)"),
                dg.TableColumn("depth", "int", description="Rewriting iterations, within the kind's allowed range"),
                dg.TableColumn("size", "int", description="Image edge in pixels (16..8192)"),
                dg.TableColumn("palette", "string", description="rainbow, fire, ice, forest or mono"),
                dg.TableColumn("segments", "int", description="Line segments the spec draws (known before rendering)"),
            ]
        )
    },
)
def fractal_specs(
    context: dg.AssetExecutionContext,
    config: FractalSpecsConfig,
    store: FractalStoreResource,
    renderer: RenderBackendResource,
) -> dg.Output[list[FractalSpec]]:
    try:
        store.get_store().check()
        settings = cost_settings_from_env(renderer.backend)
        seed = config.seed if config.seed is not None else secrets.randbits(32)
        specs = random_specs(config.count, seed=seed, kinds=config.kinds, size=config.size, palette=config.palette)
    except (InvalidSpec, StoreError, ValueError) as exc:
        raise one_line_failure(exc) from exc
    if CancelWatch(context).requested():  # nothing registered yet: an interrupted batch leaves no partitions
        raise dg.Failure(description="run canceled before its partitions were registered", allow_retries=False)
    existing = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    new_keys = [spec.key for spec in specs if spec.key not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(PARTITIONS_NAME, new_keys)
    first, last = partition_range(
        [spec.key for spec in specs], context.instance.get_dynamic_partitions(PARTITIONS_NAME)
    ) or ("", "")
    stored = store.get_store().stored_images([spec.key for spec in specs])
    prediction = predict_specs(
        cost_model(context.instance), [s for s in specs if s.key not in stored], settings, renderer.workers
    )
    context.log.info(
        f"{len(specs)} specs (seed {seed}), {len(new_keys)} new partitions; render them with "
        f"--partition-range {first}...{last}; predicted {prediction.predicted_render_s:.2f} s of render CPU"
    )
    return dg.Output(
        specs,
        metadata={
            "count": len(specs),
            "seed": seed,
            "partition_range": f"{first}...{last}",
            "new_keys": len(new_keys),
            "keys": dg.MetadataValue.json([spec.key for spec in specs]),
            "specs": dg.MetadataValue.md(specs_table(specs, set(new_keys))),
            "predicted_render_s": round(prediction.predicted_render_s, 3),
            "predicted_wall_s": dg.MetadataValue.json(prediction.to_json()["predicted_wall_s"]),
            "cost_usd": dg.MetadataValue.json(prediction.to_json()["cost_usd"]),
            "prediction": dg.MetadataValue.md(prediction_markdown(prediction, settings.max_batch_s)),
        },
    )
