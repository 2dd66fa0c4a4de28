"""The look every chart shares (``prorl plot``'s run charts, ``prorl eval``'s pass@k and
comparison charts): one matplotlib style and resolution, applied per figure.

Figures are built without pyplot: no global backend or figure registry.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib
from matplotlib.figure import Figure

DPI = 110
STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 11,
         "legend.fontsize": 9, "figure.titlesize": 15, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}


@contextmanager
def figure(path: str | Path, figsize: tuple[float, float]) -> Iterator[Figure]:
    """A constrained-layout figure drawn in :data:`STYLE`, written to ``path`` as PNG at
    :data:`DPI` when the block ends (not when it raises)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=figsize, layout="constrained")
        yield fig
        fig.savefig(path, dpi=DPI)
