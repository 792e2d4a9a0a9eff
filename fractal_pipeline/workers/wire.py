"""How the step and its worker processes talk: length-prefixed pickled frames over a pipe.

The step sends a worker its store, then chunks of keys; the worker sends back one
:class:`~fractal_pipeline.workers.results.RenderResult` or
:class:`~fractal_pipeline.workers.results.RenderFailure` per key, as soon as it is stored.
Both ends are this package at the same version (the step starts its workers from its own code),
so pickle is safe and keeps the thumbnails' bytes as they are.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!I")


def send(fd: int, message: Any) -> None:
    """Write one frame: the pickled ``message`` after its length."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def receive(fd: int) -> Any:
    """Read one frame; raises EOFError if the other end closed the pipe (before or inside a frame)."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
