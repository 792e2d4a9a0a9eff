"""The images step's own summary: counts, per-worker timings and a text Gantt chart (markdown metadata)."""

from __future__ import annotations

from collections.abc import Sequence

from fractal_pipeline.workers.timings import WorkItem, busy_intervals, busy_seconds, peak_parallel


def _gantt_row(work: Sequence[WorkItem], origin: float, span: float, width: int) -> str:
    """``width`` cells over ``span`` seconds: ``█`` working, ``·`` started but idle (each interval ≥ 1 cell)."""
    cells = [" "] * width

    def fill(start: float, end: float, mark: str) -> None:
        first = min(width - 1, max(0, int((start - origin) / span * width + 1e-9)))
        last = min(width, max(first + 1, int((end - origin) / span * width + 1e-9)))
        cells[first:last] = mark * (last - first)

    fill(min(item.worker_started_at for item in work), max(item.stored_at for item in work), "·")
    for item in work:
        fill(item.started_at, item.stored_at, "█")
    return "".join(cells)


def batch_summary_markdown(
    items: Sequence[WorkItem], total: int, failed: int, origin: float, now: float, width: int = 60
) -> str:
    """Markdown for one rendering step: counts, per-worker timings and a text Gantt chart of the workers.

    ``origin``/``now`` bound the chart (the step's batch start and end, epoch seconds). In the
    chart ``█`` is a worker rendering/encoding/storing, ``·`` a worker started but idle.
    """
    wall = max(now - origin, 1e-9)
    intervals = busy_intervals(items)
    busy = sum(end - start for start, end in intervals)
    workers: dict[str, list[WorkItem]] = {}
    for item in sorted(items, key=lambda item: item.started_at):
        workers.setdefault(item.worker, []).append(item)
    lines = [
        f"**{len(items)}/{total}** PNGs stored in {wall:.2f} s by {len(workers)} workers "
        f"(peak {peak_parallel(intervals)} at once, {busy / wall:.2f} busy on average); {failed} failed",
        "",
        "| worker | PNGs | started | first render | last put | busy | render | encode | put |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for worker, work in workers.items():
        render_ms = sum(item.rendered_at - item.started_at for item in work) * 1000
        encode_ms = sum(item.encoded_at - item.rendered_at for item in work) * 1000
        put_ms = sum(item.stored_at - item.put_start for item in work) * 1000
        lines.append(
            f"| `{worker}` | {len(work)} | +{min(i.worker_started_at for i in work) - origin:.3f} s "
            f"| +{work[0].started_at - origin:.3f} s | +{max(i.stored_at for i in work) - origin:.3f} s "
            f"| {busy_seconds(work):.3f} s "
            f"| {render_ms:.0f} ms | {encode_ms:.0f} ms | {put_ms:.0f} ms |"
        )
    if workers:
        label = max(len(worker) for worker in workers)
        lines += ["", f"Workers over the step (0 to {wall:.2f} s; █ working, · idle):", "", "```"]
        lines += [f"{worker:<{label}} |{_gantt_row(work, origin, wall, width)}|" for worker, work in workers.items()]
        lines.append("```")
    return "\n".join(lines)
