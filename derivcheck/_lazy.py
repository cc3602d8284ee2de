"""SymPy, imported on first use.

Importing SymPy takes ~0.3 s, a tenth of a warm-cache run of a 120-case suite whose
derivations all come from the compile cache: such a run never touches SymPy. Every module
of derivcheck therefore writes ``from ._lazy import sympy as sp`` instead of
``import sympy as sp``; the real import happens at the first attribute access (``sp.Symbol``)
and later accesses are plain attribute lookups. Type checkers see the real module.

Module-level code must not touch ``sp`` (a constant table of SymPy objects, a type alias
evaluated at import): build such things in a function, on first use.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any


class LazyModule(types.ModuleType):
    """Stands in for module `name` until an attribute is read, then copies the real
    module's namespace into itself (so later reads never come back here)."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # copy/pickle/inspect probing dunders: not a use
        module = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return getattr(module, attribute)


if TYPE_CHECKING:
    import sympy
else:
    sympy = LazyModule("sympy")
