"""Object keys: ``fractals/<spec key>.png`` and ``collages/<name>.png``, validated before they touch a path or a bucket.

Keys are relative and ``/``-separated; nothing outside these rules reaches a folder or a bucket.
"""

from __future__ import annotations

import re

from fractal_pipeline.fractals import FractalSpec

IMAGES_PREFIX = "fractals/"
COLLAGES_PREFIX = "collages/"
SPECS_PREFIX = "specs/"

# Lower-case ASCII words separated by single slashes; no dot-segments, no
# backslashes, no absolute paths, no look-alike unicode.
_OBJECT_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]*(/[a-z0-9][a-z0-9_.-]*)*")
MAX_OBJECT_KEY = 200
#: S3's bucket naming rules (also those of MinIO and other S3-compatible servers).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def image_key(spec_key: str) -> str:
    """Object key of a spec's PNG; the spec key is validated (canonical, safe)."""
    return f"{IMAGES_PREFIX}{FractalSpec.from_key(spec_key).key}.png"


def collage_key(name: str) -> str:
    """Object key of a collage PNG."""
    return validate_object_key(f"{COLLAGES_PREFIX}{name}.png")


def validate_object_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ValueError."""
    if (
        not isinstance(key, str)
        or len(key) > MAX_OBJECT_KEY
        or not _OBJECT_KEY_RE.fullmatch(key)
        or any(part in {".", ".."} or part.startswith("..") for part in key.split("/"))
    ):
        raise ValueError(f"key: {key!r} is not a safe object key (lower-case a-z0-9_-. words separated by '/')")
    return key
