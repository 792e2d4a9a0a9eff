"""What a worker reports for one spec, and rendering plus storing one spec.

Runs inside worker processes and the Lambda handler, so it imports only the core and the
store: no Dagster. :meth:`RenderResult.to_json` / :meth:`RenderResult.from_json` are the wire
format the Lambda backend reads.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fractal_pipeline.fractals import FractalSpec, draw
from fractal_pipeline.store import FractalStore, image_key

THUMBNAIL_PX = 128


def this_process() -> str:
    """How results name the process that rendered or stored a PNG: ``pid-<pid>``."""
    return f"pid-{os.getpid()}"


def png_markdown(alt: str, png: bytes) -> str:
    """Markdown showing ``png`` inline (a data: URI): how thumbnails appear in Dagster metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


@dataclass(frozen=True)
class RenderResult:
    """What rendering one spec did: where the PNG went, how long each phase took."""

    key: str
    object_key: str
    location: str
    segments: int
    png_bytes: int
    worker: str
    started_at: float
    rendered_at: float
    encoded_at: float
    stored_at: float
    thumbnail_png: bytes = field(repr=False)
    #: When the worker process that rendered this started (pool workers) or began this
    #: call; the ``start`` of its timeline in ``fractal-pipeline events``.
    worker_started_at: float = 0.0
    #: When the store call began: a PNG can wait after encoding (for a worker's store thread, or for
    #: the step that stores it), and ``put_ms`` is the store's own time. 0: at ``encoded_at``.
    put_started_at: float = 0.0
    #: The process that stored the PNG when it is not ``worker``: the step's, which stores the PNGs of
    #: workers that leave it a CPU (``workers.pool.step_stores``). "": the worker itself.
    stored_by: str = ""

    @property
    def render_ms(self) -> float:
        return (self.rendered_at - self.started_at) * 1000

    @property
    def encode_ms(self) -> float:
        return (self.encoded_at - self.rendered_at) * 1000

    @property
    def put_ms(self) -> float:
        return (self.stored_at - (self.put_started_at or self.encoded_at)) * 1000

    def thumbnail_markdown(self) -> str:
        """Markdown with the thumbnail inline (a data: URI), for Dagster metadata."""
        return png_markdown(self.key, self.thumbnail_png)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe fields (the thumbnail as base64), e.g. for dagster-pipes."""
        data = asdict(self)
        data["thumbnail_png"] = base64.b64encode(self.thumbnail_png).decode("ascii")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderResult:
        """The result :meth:`to_json` made; fields this version does not know (an older sender's) are left out."""
        known = {item.name for item in fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["thumbnail_png"] = base64.b64decode(values["thumbnail_png"])
        return cls(**values)


@dataclass(frozen=True)
class RenderFailure:
    """A spec that could not be rendered or stored, with the one-line reason.

    ``transient`` marks failures worth retrying later (the store was
    unreachable), as opposed to a spec that fails every time.
    """

    key: str
    error: str
    transient: bool = False


#: Exception class names (anywhere in the MRO) that mean "could not reach the store".
TRANSIENT_ERRORS = frozenset(
    {"EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionError"}
)


def is_transient(exc: BaseException) -> bool:
    """True for network/storage outages (worth a retry), false for bad specs and bugs."""
    return bool(getattr(exc, "transient", False)) or bool(
        {cls.__name__ for cls in type(exc).__mro__} & TRANSIENT_ERRORS
    )


@dataclass(frozen=True)
class RenderedSpec:
    """A spec rendered and encoded, not yet stored: a worker stores it from a thread while it renders the
    next, or hands it to the step's process to store (:data:`fractal_pipeline.workers.pool.STEP_STORES`)."""

    spec: FractalSpec
    png: bytes = field(repr=False)
    thumbnail_png: bytes = field(repr=False)
    started_at: float
    rendered_at: float
    encoded_at: float
    #: The process that rendered it and when that started, when another stores it ("" and 0: not said).
    worker: str = ""
    worker_started_at: float = 0.0


def render_spec(key: str) -> RenderedSpec:
    """Render and encode the spec with this key, and its thumbnail, timing each phase.

    The PNG and the thumbnail both come from the drawing's scanlines, and both leave as bytes: no
    Pillow image is made, copied or sent to the step.
    """
    spec = FractalSpec.from_key(key)
    started = time.time()
    drawing = draw(spec)
    thumbnail = drawing.preview_png(THUMBNAIL_PX)
    rendered = time.time()
    data = drawing.png()
    return RenderedSpec(spec, data, thumbnail, started, rendered, time.time())


def store_rendered(
    rendered: RenderedSpec, store: FractalStore, worker: str, worker_started_at: float, stored_by: str = ""
) -> RenderResult:
    """Store a rendered spec's PNG; report where it went and the timings of the process ``worker``
    (``stored_by``: the process storing it, when not the worker)."""
    object_key = image_key(rendered.spec.key)
    put_started = time.time()
    location = store.put(object_key, rendered.png)
    return RenderResult(
        key=rendered.spec.key,
        object_key=object_key,
        location=location,
        segments=rendered.spec.segments,
        png_bytes=len(rendered.png),
        worker=worker,
        started_at=rendered.started_at,
        rendered_at=rendered.rendered_at,
        encoded_at=rendered.encoded_at,
        stored_at=time.time(),
        thumbnail_png=rendered.thumbnail_png,
        worker_started_at=worker_started_at,
        put_started_at=put_started,
        stored_by=stored_by,
    )


def render_and_store(
    key: str, store: FractalStore, worker: str | None = None, worker_started_at: float | None = None
) -> RenderResult:
    """Render the spec with this key, store its PNG, and report the timings.

    ``worker`` names the process (default: this one, ``pid-<pid>``); ``worker_started_at`` is when it
    started (default: when this render began).
    """
    rendered = render_spec(key)
    started = rendered.started_at if worker_started_at is None else worker_started_at
    return store_rendered(rendered, store, worker or this_process(), started)


def failure(key: str, exc: BaseException) -> RenderFailure:
    """A spec's failure as one line: the exception's type and message; transient if the store was unreachable."""
    return RenderFailure(key, f"{type(exc).__name__}: {exc}", transient=is_transient(exc))
