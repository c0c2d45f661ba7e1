"""Figures through matplotlib's object API.

``pyplot`` keeps global state and ``matplotlib.use("Agg")`` switches the backend of the whole
process, which would change the backend of a notebook user who imports hubsdd. A ``Figure`` with an
Agg canvas draws to a file without touching either.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def figure(path: Path, *, figsize: tuple[float, float], dpi: int = 110, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """Yield ``(fig, axes)`` and write the figure to ``path`` (PNG) when the block ends."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(**subplots)
    yield fig, axes
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
