"""Evaluate a SymPy expression numerically with numpy or torch, node by node.

This is *evaluation*, not differentiation: ``Derivative`` nodes are handed to a callback
that the caller (an engine) implements its own way -- autograd for torch, difference
stencils for finite differences, propagated jets for the numpy engine. Symbols are looked
up in an environment; applied undefined functions (fields such as ``u(x, y)``) are looked
up by name.

Only the node types the safe parser can produce (plus what SymPy's simplification makes
of them) are supported; anything else raises ``ValueError`` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from derivcheck._lazy import sympy as sp

DerivativeHandler = Callable[["sp.Derivative"], Any]


def _numpy_functions() -> dict[type, Callable[..., Any]]:
    import math

    import numpy as np

    erf = np.vectorize(math.erf, otypes=[float])
    return {
        sp.sin: np.sin, sp.cos: np.cos, sp.tan: np.tan, sp.exp: np.exp, sp.log: np.log,
        sp.tanh: np.tanh, sp.sinh: np.sinh, sp.cosh: np.cosh, sp.asin: np.arcsin,
        sp.acos: np.arccos, sp.atan: np.arctan, sp.Abs: np.abs, sp.sign: np.sign, sp.erf: erf,
        sp.Heaviside: lambda a, *rest: np.heaviside(a, 0.5),
    }  # fmt: skip


def _torch_functions() -> dict[type, Callable[..., Any]]:
    import torch

    return {
        sp.sin: torch.sin, sp.cos: torch.cos, sp.tan: torch.tan, sp.exp: torch.exp, sp.log: torch.log,
        sp.tanh: torch.tanh, sp.sinh: torch.sinh, sp.cosh: torch.cosh, sp.asin: torch.asin,
        sp.acos: torch.acos, sp.atan: torch.atan, sp.Abs: torch.abs, sp.sign: torch.sign, sp.erf: torch.erf,
        sp.Heaviside: lambda a, *rest: torch.heaviside(a, torch.full_like(a, 0.5)),
    }  # fmt: skip


class Evaluator:
    """Evaluate expressions with `library` ``"numpy"`` or ``"torch"``.

    **Arguments:**

    - `env`: values of symbols (variables, constants, sources) by SymPy symbol.
    - `fields`: values of fields by name (``"u"``).
    - `derivative`: callback computing a ``Derivative`` node's value.
    - `like`: an array/tensor whose shape, dtype and device constants are broadcast to.
    """

    def __init__(
        self,
        library: str,
        env: Mapping[sp.Symbol, Any],
        fields: Mapping[str, Any],
        derivative: DerivativeHandler | None,
        like: Any,
    ):
        self.library = library
        self.env = env
        self.fields = fields
        self.derivative = derivative
        self.like = like
        self.functions = _numpy_functions() if library == "numpy" else _torch_functions()
        self.cache: dict[sp.Expr, Any] = {}

    def constant(self, value: float) -> Any:
        if self.library == "numpy":
            import numpy as np

            return np.full(self.like.shape, value, dtype=self.like.dtype)
        import torch

        return torch.full_like(self.like, value)

    def __call__(self, expr: sp.Expr) -> Any:
        if expr in self.cache:
            return self.cache[expr]
        value = self._eval(expr)
        self.cache[expr] = value
        return value

    def _eval(self, expr: sp.Expr) -> Any:
        if expr.is_Number or expr in (sp.pi, sp.E) or isinstance(expr, sp.NumberSymbol):
            return self.constant(float(expr))
        if isinstance(expr, sp.Symbol):
            if expr not in self.env:
                raise ValueError(f"no value for symbol {expr}")
            value = self.env[expr]
            return self.constant(float(value)) if isinstance(value, (int, float)) else value
        if isinstance(expr, sp.core.function.AppliedUndef):
            return self.fields[expr.func.__name__]
        if isinstance(expr, sp.Derivative):
            if self.derivative is None:
                raise ValueError("this evaluator cannot take derivatives")
            return self.derivative(expr)
        if isinstance(expr, sp.Add):
            total = self(expr.args[0])
            for arg in expr.args[1:]:
                total = total + self(arg)
            return total
        if isinstance(expr, sp.Mul):
            product = self(expr.args[0])
            for arg in expr.args[1:]:
                product = product * self(arg)
            return product
        if isinstance(expr, sp.Pow):
            base, exponent = expr.args
            if exponent == sp.Rational(1, 2):
                return self._sqrt(self(base))
            if exponent.is_Number:
                return self(base) ** float(exponent) if not exponent.is_Integer else self(base) ** int(exponent)
            return self(base) ** self(exponent)
        if isinstance(expr, (sp.Max, sp.Min)):
            values = [self(a) for a in expr.args]
            reduce = self._maximum if isinstance(expr, sp.Max) else self._minimum
            result = values[0]
            for v in values[1:]:
                result = reduce(result, v)
            return result
        function = self.functions.get(type(expr))
        if function is not None:
            return function(*[self(a) for a in expr.args])
        raise ValueError(f"cannot evaluate {type(expr).__name__} node {expr} with {self.library}")

    def _sqrt(self, value: Any) -> Any:
        if self.library == "numpy":
            import numpy as np

            return np.sqrt(value)
        import torch

        return torch.sqrt(value)

    def _maximum(self, a: Any, b: Any) -> Any:
        if self.library == "numpy":
            import numpy as np

            return np.maximum(a, b)
        import torch

        return torch.maximum(a, b)

    def _minimum(self, a: Any, b: Any) -> Any:
        if self.library == "numpy":
            import numpy as np

            return np.minimum(a, b)
        import torch

        return torch.minimum(a, b)
