"""PNGs in a local folder, written atomically (temp file, then rename)."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fractal_pipeline.store.base import FractalStore
from fractal_pipeline.store.config import StoreConfig, StoreError
from fractal_pipeline.store.keys import validate_object_key


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``mkstemp`` makes them 0600)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


class LocalStore(FractalStore):
    """PNGs in a local folder. Writes go to a temp file, then rename: a crash
    never leaves a half-written PNG under its final name."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.config = StoreConfig(local_dir=str(self.root))

    def _path(self, key: str) -> Path:
        return self.root / validate_object_key(key)

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        # The writer's pid in the temp name lets an interrupted batch clean up after its workers.
        temp_file = functools.partial(tempfile.mkstemp, dir=path.parent, prefix=f".tmp-{os.getpid()}-", suffix=".part")
        try:
            try:
                fd, tmp = temp_file()
            except FileNotFoundError:  # the folder is made on the first write into it, not checked for each PNG
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = temp_file()
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"key: {key!r} lies under an existing object in {self.root}; use another key") from exc
        try:
            os.fchmod(fd, _new_file_mode())
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except IsADirectoryError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StoreError(f"key: {key!r} is a folder in {self.root}; use another key") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return str(path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str, *, quick: bool = False) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        if not base.is_dir():
            return
        found = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    found.append(key)
        yield from sorted(found)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def remove_partials(self, writer_pids: set[int]) -> int:
        """Delete temp files left by the given (dead) writer processes; returns how many."""
        removed = 0
        if self.root.is_dir():
            for pid in writer_pids:
                for path in self.root.rglob(f".tmp-{pid}-*.part"):
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def location(self, key: str) -> str:
        return str(self._path(key).resolve())

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"FRACTALS_DIR: cannot create {self.root}: {exc.strerror}; point it at a writable folder"
            ) from exc
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"FRACTALS_DIR: {self.root} is not writable; point it at a writable folder")
