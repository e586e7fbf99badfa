"""PNG charts of EPC MB-hours (presentation only: no fetching, no arithmetic)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sgxcloud.nova.errors import UsageError
from sgxcloud.nova.usage import ProjectEpcUsage

# -- charts ---------------------------------------------------------------------


def write_chart(usages: Sequence[ProjectEpcUsage], path: str, by: str = "server") -> str:
    """A PNG bar chart of EPC MB-hours per server or per day; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    if by == "server":
        labels = [
            f"{s.name or s.server_id[:8]} ({s.project_id[:8]})" for u in usages for s in u.servers
        ]
        values = [s.epc_mb_hours for u in usages for s in u.servers]
        title = "EPC MB-hours per server"
    elif by == "day":
        days: dict[dt.date, float] = {}
        for u in usages:
            for day, value in u.epc_mb_hours_per_day().items():
                days[day] = days.get(day, 0.0) + value
        labels = [d.isoformat() for d in sorted(days)]
        values = [days[d] for d in sorted(days)]
        title = "EPC MB-hours per day (UTC)"
    else:
        raise UsageError(f"chart by {by!r}: choose 'server' or 'day'")
    if usages:
        start = min(u.start for u in usages).strftime("%Y-%m-%d %H:%M")
        stop = max(u.stop for u in usages).strftime("%Y-%m-%d %H:%M")
        title += f"\n{start} to {stop} UTC"
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 2), 4.5))
    try:
        axes.bar(range(len(values)), values, color="#3b6ea5")
        axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axes.set_ylabel("EPC MB-hours")
        axes.set_title(title)
        for index, value in enumerate(values):
            axes.annotate(f"{value:.2f}", (index, value), ha="center", va="bottom", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write chart {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return path
