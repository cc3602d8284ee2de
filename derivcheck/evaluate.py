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

import functools
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


@functools.lru_cache(maxsize=None)
def _function_table(library: str) -> dict[type, Callable[..., Any]]:
    return _numpy_functions() if library == "numpy" else _torch_functions()


# One step of a plan: (operation, argument step indices, payload). Operations: "const"
# (payload: float), "symbol" (payload: the Symbol), "field" (payload: its name), "deriv"
# (payload: the Derivative node), "add"/"mul"/"max"/"min" (arguments), "sqrt", "pow"
# (payload: an int or float exponent, or None when the exponent is the second argument),
# "call" (payload: the SymPy function class and the node, for the error message).
_Step = tuple[str, tuple[int, ...], Any]


@functools.lru_cache(maxsize=4096)
def _plan(expr: sp.Expr) -> tuple[_Step, ...]:
    """`expr` as a list of steps in evaluation order, shared subexpressions once.

    Walking SymPy's tree costs far more than the arithmetic (hashing, ``isinstance`` and
    comparisons of SymPy objects for every node), and finite differences evaluate the same
    residual thousands of times: the walk is done once per expression."""
    steps: list[_Step] = []
    index: dict[Any, int] = {}

    def visit(node: Any) -> int:
        if node in index:
            return index[node]
        step: _Step
        if node.is_Number or node in (sp.pi, sp.E) or isinstance(node, sp.NumberSymbol):
            step = ("const", (), float(node))
        elif isinstance(node, sp.Symbol):
            step = ("symbol", (), node)
        elif isinstance(node, sp.core.function.AppliedUndef):
            step = ("field", (), node.func.__name__)
        elif isinstance(node, sp.Derivative):
            step = ("deriv", (), node)
        elif isinstance(node, (sp.Add, sp.Mul, sp.Max, sp.Min)):
            op = {sp.Add: "add", sp.Mul: "mul", sp.Max: "max", sp.Min: "min"}[type(node)]
            step = (op, tuple(visit(a) for a in node.args), None)
        elif isinstance(node, sp.Pow):
            base, exponent = node.args
            if exponent == sp.Rational(1, 2):
                step = ("sqrt", (visit(base),), None)
            elif exponent.is_Number:
                step = ("pow", (visit(base),), int(exponent) if exponent.is_Integer else float(exponent))
            else:
                step = ("pow", (visit(base), visit(exponent)), None)
        else:
            step = ("call", tuple(visit(a) for a in node.args), (type(node), node))
        index[node] = len(steps)
        steps.append(step)
        return index[node]

    visit(expr)
    return tuple(steps)


class Evaluator:
    """Evaluate expressions with `library` ``"numpy"`` or ``"torch"``.

    **Arguments:**

    - `env`: values of symbols (variables, constants, sources) by SymPy symbol.
    - `fields`: values of fields by name (``"u"``).
    - `derivative`: callback computing a ``Derivative`` node's value (called once per
      distinct node and evaluator).
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
        self.functions = _function_table(library)
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
        values: list[Any] = []
        for op, args, payload in _plan(expr):
            values.append(self._step(op, [values[i] for i in args], payload))
        self.cache[expr] = values[-1]
        return values[-1]

    def _step(self, op: str, args: list[Any], payload: Any) -> Any:
        if op == "const":
            return self.constant(payload)
        if op == "symbol":
            if payload not in self.env:
                raise ValueError(f"no value for symbol {payload}")
            value = self.env[payload]
            return self.constant(float(value)) if isinstance(value, (int, float)) else value
        if op == "field":
            return self.fields[payload]
        if op == "deriv":
            if self.derivative is None:
                raise ValueError("this evaluator cannot take derivatives")
            if payload not in self.cache:
                self.cache[payload] = self.derivative(payload)
            return self.cache[payload]
        if op in ("add", "mul"):
            result = args[0]
            for arg in args[1:]:
                result = result + arg if op == "add" else result * arg
            return result
        if op == "sqrt":
            return self._sqrt(args[0])
        if op == "pow":
            return args[0] ** (payload if payload is not None else args[1])
        if op in ("max", "min"):
            reduce = self._maximum if op == "max" else self._minimum
            result = args[0]
            for arg in args[1:]:
                result = reduce(result, arg)
            return result
        kind, node = payload
        function = self.functions.get(kind)
        if function is None:
            raise ValueError(f"cannot evaluate {kind.__name__} node {node} with {self.library}")
        return function(*args)

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
