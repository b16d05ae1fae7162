"""psiq: private set intersection, oblivious transfer and private information retrieval.

The one-call entry points live in :mod:`psi.api` and are re-exported here lazily (importing
``psi`` does no work): ``psi.connect``, ``psi.serve``, ``psi.align``, ``psi.intersect_files``,
``psi.PsiOptions``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "connect", "serve", "align", "intersect", "intersect_files", "PsiOptions"]

_API = {"connect", "serve", "align", "intersect_files", "PsiOptions"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "intersect":
        from . import api

        return api.intersect
    raise AttributeError(f"module 'psi' has no attribute {name!r}")
