"""The one way every stage's plotting function ends: lay out, save where asked, hand back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def finish_figure(fig: Any, path: str | os.PathLike | None = None, dpi: int = 120) -> Any:
    """Tighten ``fig``'s layout and, when ``path`` is given, save it there (creating its folder).

    Returns the figure, so a plotting function can end with ``return finish_figure(fig, path)``
    and a notebook shows it inline.
    """
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
