"""The interface every store implements: put, get and list PNG bytes by object key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fractal_pipeline.store.config import StoreConfig
from fractal_pipeline.store.keys import IMAGES_PREFIX, image_key


class FractalStore:
    """Put, get and list PNG bytes by object key."""

    config: StoreConfig

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically under ``key``; returns its location (path or s3:// URL)."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """Bytes stored under ``key``; KeyError if there are none."""
        raise NotImplementedError

    def exists(self, key: str, *, quick: bool = False) -> bool:
        """Whether ``key`` is stored. ``quick``: ask as :meth:`check` does, so that a store that is down
        fails in seconds instead of after an upload's retries (for a batch that is stopping)."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, in lexicographic order."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def location(self, key: str) -> str:
        """Where ``key`` is (a path or an s3:// URL), for metadata and the CLI."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise StoreError with the setting to fix if the store is unusable."""
        raise NotImplementedError

    def stored_images(self, spec_keys: Iterable[str]) -> set[str]:
        """Those of ``spec_keys`` whose PNG is stored (one listing; a key that is not a valid spec key never is)."""
        present = set(self.list(IMAGES_PREFIX))
        stored = set()
        for key in spec_keys:
            try:
                if image_key(key) in present:
                    stored.add(key)
            except ValueError:  # InvalidSpec: no PNG can be stored under it
                continue
        return stored
