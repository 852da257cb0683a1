"""Presentation shared by the reports (audit, controller evaluation, findings): text tables,
numbers with intervals, and matplotlib figures written without a display."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    """An aligned text table, or a Markdown pipe table."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        padded = [str(c).ljust(w) for c, w in zip(cells, widths)]
        return f"| {' | '.join(padded)} |" if markdown else "  ".join(padded).rstrip()

    rule = ["-" * w for w in widths]
    body = [line(headers), line(rule) if markdown else "  ".join(rule)]
    return "\n".join(body + [line(r) for r in rows])


def format_number(x: float | None, fmt: str = ".3g") -> str:
    """``x`` in ``fmt``; ``n/a`` for a missing value, ``inf`` for an infinite one."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "inf" if math.isinf(x) else format(x, fmt)


def format_interval(lo: float, hi: float, fmt: str = ".3g") -> str:
    """``[lo, hi]`` with :func:`format_number`'s spelling of each end."""
    return f"[{format_number(lo, fmt)}, {format_number(hi, fmt)}]"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: the
    reports are the only place trainenv draws)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` (PNG at 110 dpi) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
