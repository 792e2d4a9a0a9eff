"""Captured step output: Dagster's local compute-log files, mirrored to the step's console from a thread."""

import contextlib
import os
import sys
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file

#: How often a step's captured output is copied to its console, and how long the end of a step
#: waits for the last of it.
MIRROR_INTERVAL_S = 0.1
MIRROR_DRAIN_S = 2.0


@contextmanager
def _mirrored_to_file(stream: IO[str], path: str) -> Iterator[None]:
    """Send ``stream`` (its file descriptor, so child processes' output too) to ``path`` and copy
    what arrives there to where ``stream`` went before, from a thread, until the block ends."""
    ensure_file(path)
    try:
        console = os.dup(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real descriptor (e.g. captured by a test): file only
        with redirect_to_file(stream, path):
            yield
        return
    stop = threading.Event()

    def pump() -> None:  # owns ``console``: closed when done, never while a write may still use it
        try:
            with open(path, "rb") as source:
                while True:
                    data = source.read(1 << 16)
                    if data:
                        with contextlib.suppress(OSError):  # a closed console must not stop the capture
                            while data:
                                data = data[os.write(console, data) :]
                    elif stop.is_set():
                        return
                    else:
                        stop.wait(MIRROR_INTERVAL_S)
        finally:
            os.close(console)

    thread = threading.Thread(target=pump, name="compute-log-mirror", daemon=True)
    thread.start()
    try:
        with redirect_to_file(stream, path):
            yield
    finally:
        stop.set()
        # The rest reaches the console; a console that stopped reading does not hold up the step.
        thread.join(MIRROR_DRAIN_S)


class ThreadMirroredComputeLogManager(LocalComputeLogManager):
    """Dagster's ``LocalComputeLogManager`` (same files, config and readers), mirroring a step's
    captured output to its console from a thread of the step's process.

    The stock manager mirrors each of stdout and stderr with a ``tail -F`` process and a
    Python watcher process that kills ``tail`` if the step's process dies: four processes
    per step, whose start and stop take CPU from the render workers when they use every CPU.
    A thread ends with its process, so there is nothing to watch.
    """

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "ThreadMirroredComputeLogManager":
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with _mirrored_to_file(sys.stdout, outpath), _mirrored_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))
