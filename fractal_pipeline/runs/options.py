"""What ``fractal-pipeline run`` was asked for, checked before anything is recorded.

The CLI draws progress and prints; what it decides comes from here, :mod:`fractal_pipeline.runs.execute`
and :func:`fractal_pipeline.defs.batch_plan.plan_batch`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fractal_pipeline.fractals import (
    DEFAULT_PALETTE,
    DEFAULT_SIZE,
    KINDS,
    PALETTES,
    FractalSpec,
    InvalidSpec,
    check_random_count,
)
from fractal_pipeline.workers.pool import MAX_WORKERS_PER_CPU, max_workers

if TYPE_CHECKING:
    pass

BACKENDS = ("local", "lambda")
#: ``--seed`` values a run records (Dagster's metadata and config hold 64-bit integers).
MAX_SEED = 2**63 - 1


class UsageError(ValueError):
    """A bad option: the message names it and the allowed values."""


@dataclass(frozen=True)
class RunOptions:
    """What ``fractal-pipeline run`` was asked for."""

    count: int = 12
    seed: int | None = None
    kinds: tuple[str, ...] | None = None
    size: int = DEFAULT_SIZE
    palette: str = DEFAULT_PALETTE  # or "random": a palette per spec
    workers: int = 0
    collage: bool = True
    backend: str = "local"
    region: str | None = None

    @property
    def spec_palette(self) -> str | None:
        """The palette of every spec, or None for a random one per spec."""
        return None if self.palette == "random" else self.palette

    def checked(self) -> tuple[RunOptions, list[str]]:
        """These options, validated (:class:`UsageError` naming the option) and with ``--workers`` capped;
        and one note for each value that was changed."""
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend: unknown backend {self.backend!r}; use {' or '.join(BACKENDS)}")
        if self.region and self.backend != "lambda":
            raise UsageError("--region: only the lambda backend uses it; add --backend lambda, or leave --region out")
        if self.palette != "random" and self.palette not in PALETTES:
            raise UsageError(f"--palette: {self.palette!r} is not a palette; use {', '.join(PALETTES)} or random")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed: {self.seed} is out of range: allowed 0..{MAX_SEED}")
        try:
            FractalSpec(self.kinds[0] if self.kinds else "dragon", 0, self.size, self.spec_palette or DEFAULT_PALETTE)
            check_random_count(self.count, self.kinds, self.spec_palette)
        except InvalidSpec as exc:
            raise UsageError(f"--{exc}") from None
        most = max_workers()
        if self.workers < 0:
            raise UsageError(f"--workers: {self.workers} is out of range: allowed 0 (one per CPU) to {most}")
        notes = []
        options = self
        if self.workers > most:
            notes.append(f"--workers: {self.workers} is more than {MAX_WORKERS_PER_CPU} per CPU; using {most}")
            options = replace(self, workers=most)
        return options, notes

    def command(self, seed: int) -> str:
        """The ``fractal-pipeline run`` command that asks for the same specs again (with ``seed``)."""
        words = ["fractal-pipeline", "run", "--count", str(self.count), "--seed", str(seed)]
        if self.kinds:
            words += ["--kinds", ",".join(self.kinds)]
        if self.size != DEFAULT_SIZE:
            words += ["--size", str(self.size)]
        if self.palette != DEFAULT_PALETTE:
            words += ["--palette", self.palette]
        if self.workers:
            words += ["--workers", str(self.workers)]
        if not self.collage:
            words.append("--no-collage")
        if self.backend != "local":
            words += ["--backend", self.backend]
        if self.region:
            words += ["--region", self.region]
        return shlex.join(words)


def parse_kinds(value: str | None) -> tuple[str, ...] | None:
    """``--kinds a,b``: the kinds named (each checked), or None for all."""
    if value is None:
        return None
    kinds = tuple(dict.fromkeys(kind.strip() for kind in value.split(",") if kind.strip()))
    if not kinds:
        raise UsageError(f"--kinds: {value!r} names no kind; name at least one (see `fractal-pipeline kinds`)")
    for kind in kinds:
        if kind not in KINDS:
            try:
                FractalSpec(kind, 0)
            except InvalidSpec as exc:
                raise UsageError(f"--kinds: {str(exc).split(': ', 1)[1]}") from None
    return kinds
