"""IO managers: PNGs in the fractal store.

``PngIOManager`` writes images returned by assets (the collage) to
``collages/<asset name>.png`` and, for a partitioned upstream such as
``fractal_images``, hands the downstream a lazy :class:`PngCollection` of
loaders instead of decoding N images up front.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import dagster as dg
from PIL import Image

from fractal_pipeline.defs.resources import FractalStoreResource
from fractal_pipeline.store import FractalStore, collage_key, image_key


class PngCollection:
    """Stored PNGs of some partitions, as ``(key, loader)`` pairs, read lazily.

    ``len()`` is the number of tiles that exist in the store; ``missing``
    lists partition keys that have no stored object.
    """

    def __init__(self, store: FractalStore, keys: Sequence[str], stored: set[str]) -> None:
        """``stored``: the spec keys whose PNG is stored (:meth:`FractalStore.stored_images`)."""
        self._store = store
        self.keys = [key for key in keys if key in stored]
        #: Partitions without a PNG, including keys that are not valid spec keys (none can be stored).
        self.missing = [key for key in keys if key not in stored]

    def __len__(self) -> int:
        return len(self.keys)

    def _loader(self, key: str) -> Callable[[], bytes]:
        return lambda: self._store.get(image_key(key))

    def __iter__(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        for key in self.keys:
            yield key, self._loader(key)


class PngIOManager(dg.ConfigurableIOManager):
    """Stores PIL images / PNG bytes as ``collages/<name>.png`` in the fractal store."""

    store: FractalStoreResource

    def _name(self, context: dg.OutputContext | dg.InputContext) -> str:
        return "_".join(context.asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: Image.Image | bytes | None) -> None:
        if obj is None:
            return
        if isinstance(obj, Image.Image):
            buffer = io.BytesIO()
            obj.save(buffer, format="PNG", compress_level=6)
            data = buffer.getvalue()
        else:
            data = obj
        key = collage_key(self._name(context))
        location = self.store.get_store().put(key, data)
        meta = dg.MetadataValue.url(location) if location.startswith("s3://") else dg.MetadataValue.path(location)
        context.add_output_metadata({"location": meta, "bytes": len(data)})

    def load_input(self, context: dg.InputContext) -> PngCollection | bytes:
        store = self.store.get_store()
        if context.has_asset_partitions:
            keys = list(context.asset_partition_keys)
            return PngCollection(store, keys, store.stored_images(keys))
        return store.get(collage_key(self._name(context)))
