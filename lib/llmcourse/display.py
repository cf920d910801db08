"""Helpers for showing results in the chapters, on the website and in plain Jupyter alike."""

from __future__ import annotations

from typing import Any

__all__ = ["glue"]


def glue(name: str, value: Any, display: bool = False) -> None:
    """Record ``value`` under ``name`` so the website's prose can quote it ({glue:text}`name`).

    On the website (MyST-NB installed) this is ``myst_nb.glue``: numbers in the text come from
    the executed notebook, never typed by hand. Elsewhere (Colab, plain Jupyter) it prints
    ``name = value`` when ``display`` is true and otherwise does nothing.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            print(f"{name} = {value}")
        return
    myst_glue(name, value, display=display)
