"""PNGs in a local folder, written atomically (temp file, then rename)."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fractal_pipeline.store.base import FractalStore
from fractal_pipeline.store.config import StoreConfig, StoreError
from fractal_pipeline.store.keys import COLLAGES_PREFIX, IMAGES_PREFIX, SPECS_PREFIX, validate_object_key


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``mkstemp`` makes them 0600)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def _temp_file(folder: Path) -> tuple[int, str]:
    """A new temp file in ``folder`` (descriptor, path), named after this process: the writer's pid in the
    name lets an interrupted batch clean up after its workers (:meth:`LocalStore.remove_partials`)."""
    return tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.getpid()}-", suffix=".part")


#: The folders of the store's keys (:mod:`fractal_pipeline.store.keys`).
KEY_FOLDERS = (IMAGES_PREFIX, COLLAGES_PREFIX, SPECS_PREFIX)


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
        try:
            try:
                fd, tmp = _temp_file(path.parent)
            except FileNotFoundError:  # the folder is made on the first write into it, not checked for each PNG
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = _temp_file(path.parent)
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
        # Only the prefix's folder is walked: FRACTALS_DIR may be a folder that holds much else (a home folder).
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return
        found = []
        try:
            for path in base.rglob("*"):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix):
                        found.append(key)
        except OSError as exc:
            raise StoreError(
                f"FRACTALS_DIR: cannot read {exc.filename or base}: {exc.strerror}; point it at a readable folder"
            ) from exc
        yield from sorted(found)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def remove_partials(self, writer_pids: set[int]) -> int:
        """Delete temp files left by the given (dead) writer processes; returns how many."""
        removed = 0
        for prefix in KEY_FOLDERS:  # a temp file sits beside the object it becomes: in one of the key folders
            folder = self.root / prefix
            if not folder.is_dir():
                continue
            for pid in writer_pids:
                for path in folder.rglob(f".tmp-{pid}-*.part"):
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
        images = self.root / IMAGES_PREFIX
        if images.exists() and not images.is_dir():
            raise StoreError(
                f"FRACTALS_DIR: {images} is a file, not a folder; move it away or point FRACTALS_DIR at another folder"
            )
        # What a PNG's write does, in the folder it lands in (or the one that folder is made in): a folder
        # can exist and refuse new files. Nothing is left behind, and a dry run creates no folder.
        folder = images if images.is_dir() else self.root
        try:
            fd, probe = _temp_file(folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StoreError(
                f"FRACTALS_DIR: cannot write in {folder}: {exc.strerror}; point it at a writable folder"
            ) from exc
