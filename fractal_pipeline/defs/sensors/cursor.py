"""The spec-file sensor's cursor: a LastModified watermark and the files handled at or after it."""

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

SENSOR_NAME = "fractal_spec_files"
#: Files whose LastModified is this close to the newest one handled are remembered
#: by key and ETag: S3 stamps an object when its upload *starts*, so a slow upload
#: can appear after a newer, faster one.
SETTLE_SECONDS = 120


def utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def etag(obj: Mapping[str, Any]) -> str:
    return str(obj.get("ETag", "")).strip('"')


@dataclass
class SpecFilesCursor:
    """Where the sensor is: a LastModified watermark and the files handled at or after it.

    Serialised as JSON ``{"last_modified": <ISO watermark>, "seen": {key: [etag, epoch]}}``,
    plus ``"reconciled_at": <epoch>`` in queue mode (when the listing last ran to
    the end; absent in listing mode and in cursors written before queue mode),
    and ``"recheck": [key, ...]`` for files of ``seen`` refused over the batch budget.
    A listed object is new when its LastModified is at or after the watermark
    and its key is not in ``seen`` with the same ETag; or, for a ``recheck`` file,
    when it was uploaded again since (the budget may have been raised meanwhile).
    """

    last_modified: datetime | None = None
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    reconciled_at: float | None = None
    recheck: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: str | None) -> "SpecFilesCursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            watermark = datetime.fromisoformat(data["last_modified"]) if data.get("last_modified") else None
            seen = {str(k): (str(v[0]), float(v[1])) for k, v in data.get("seen", {}).items()}
            reconciled_at = float(data["reconciled_at"]) if data.get("reconciled_at") is not None else None
            recheck = frozenset(str(key) for key in data.get("recheck", ()))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ValueError(
                f"cursor: {raw[:80]!r} is not a {SENSOR_NAME} cursor ({exc}); "
                "reset it in the UI (sensor page, 'Set cursor value') to start over"
            ) from None
        return cls(watermark, seen, reconciled_at, recheck)

    def dump(self) -> str:
        data: dict[str, Any] = {
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
            "seen": {k: [etag, lm] for k, (etag, lm) in sorted(self.seen.items())},
        }
        if self.reconciled_at is not None:
            data["reconciled_at"] = self.reconciled_at
        if self.recheck:
            data["recheck"] = sorted(self.recheck)
        return json.dumps(data, separators=(",", ":"))

    def since(self) -> datetime | None:
        """What to pass to ``get_objects(since_last_modified=...)`` (it is exclusive)."""
        return self.last_modified - timedelta(seconds=1) if self.last_modified else None

    def is_new(self, obj: Mapping[str, Any]) -> bool:
        if self.last_modified is not None and utc(obj["LastModified"]) < self.last_modified:
            return False
        remembered = self.seen.get(obj["Key"])
        if remembered is not None and obj["Key"] in self.recheck:
            return remembered[0] != etag(obj) or utc(obj["LastModified"]).timestamp() > remembered[1]
        return remembered is None or remembered[0] != etag(obj)

    def _seen_with(
        self, handled: Sequence[Mapping[str, Any]], refused: Collection[str]
    ) -> tuple[dict[str, tuple[str, float]], set[str]]:
        seen, recheck = dict(self.seen), set(self.recheck)
        for obj in handled:
            seen[obj["Key"]] = (etag(obj), utc(obj["LastModified"]).timestamp())
            if obj["Key"] in refused:
                recheck.add(obj["Key"])
            else:
                recheck.discard(obj["Key"])
        return seen, recheck

    def advanced(
        self, handled: Sequence[Mapping[str, Any]], horizon: datetime | None = None, refused: Collection[str] = ()
    ) -> "SpecFilesCursor":
        """The cursor after ``handled`` (listed objects) were fully handled.

        The watermark moves to the newest handled LastModified minus
        :data:`SETTLE_SECONDS`, or to ``horizon`` if later: a time before which
        no unhandled object can be (the caller passes the S3 server's time at
        the listing minus the settle window, capped by the oldest listed file
        it left for the next tick). Files handled before the new watermark are
        forgotten, so the cursor holds only the last few minutes of uploads.
        ``refused``: keys of handled files refused over the budget (``recheck``).
        """
        marks = [self.last_modified] if self.last_modified is not None else []
        if handled:
            marks.append(max(utc(obj["LastModified"]) for obj in handled) - timedelta(seconds=SETTLE_SECONDS))
        if horizon is not None:
            marks.append(utc(horizon))
        if not marks:
            return self
        watermark = max(marks)
        seen, recheck = self._seen_with(handled, refused)
        floor = watermark.timestamp()
        kept = {k: v for k, v in seen.items() if v[1] >= floor}
        return SpecFilesCursor(watermark, kept, self.reconciled_at, frozenset(recheck & set(kept)))

    def remembered(self, handled: Sequence[Mapping[str, Any]], refused: Collection[str] = ()) -> "SpecFilesCursor":
        """The cursor after ``handled`` (objects announced by the queue) were fully handled.

        The watermark does not move: only a listing that ran to the end may
        move it past files whose notification never came. Each file stays in
        ``seen`` until a later listing's watermark passes its event time, so a
        repeated notification, or that listing, does not handle it again.
        """
        if not handled:
            return self
        seen, recheck = self._seen_with(handled, refused)
        return replace(self, seen=seen, recheck=frozenset(recheck))


def settle_horizon(server_now: datetime) -> datetime:
    """A time before which no file can still appear in a listing taken at ``server_now`` (the S3 server's clock)."""
    return server_now - timedelta(seconds=SETTLE_SECONDS)
