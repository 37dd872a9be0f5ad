"""streamrec: streaming online learning for click-through-rate prediction.

``import streamrec`` gives the Python API (streamrec/api.py): :class:`Model` to learn and
predict from dicts, DataFrames or Arrow tables, :func:`evaluate` for a progressive pass over a
log file, :func:`load` and :func:`load_version` for saved models and published versions. The
folders beside this one are its subpackages (``streamrec.models``, ``streamrec.stream``, ...,
ARCHITECTURE.md); the command line is ``streamrec`` (streamrec/cli/).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_API = ("Model", "evaluate", "load", "load_version", "model_names")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    # The API imports torch and every model: loaded on first use, so `streamrec stack up` or a
    # subpackage import (`streamrec.stream.events`) stays light.
    if name in _API:
        from streamrec import api

        return getattr(api, name)
    raise AttributeError(f"module 'streamrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
