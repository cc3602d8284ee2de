"""Differential operators of PDEs, on SymPy expressions and on torch tensors.

SymPy side: every operator returns *unevaluated* ``sympy.Derivative`` nodes, so a parsed
PDE keeps its structure (each engine decides how to differentiate); ``.doit()`` turns them
into closed forms.

Torch side: PINN-style autograd. Each independent variable is its own leaf tensor of shape
``(P,)`` with ``requires_grad=True``; a field value ``u`` is ``(P,)``. Because points are
independent, ``d u / d x`` at every point is the gradient of ``u.sum()``; every call uses
``create_graph=True`` so derivatives can be differentiated again.

Case-file syntax (parsed by :func:`operator_handlers`)::

    d(u, x)          first partial derivative
    d(u, x, 2)       second partial derivative (order after the variable)
    d(u, x, y)       mixed derivative; d(u, x, 2, y) is u_xxy
    laplacian(u)     sum of second derivatives over the spatial variables
    div(a, b)        divergence of the vector (a, b) over the spatial variables
    advect(u, a, b)  advection (a, b) . grad u

The first argument of every operator may be any expression of the fields.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from derivcheck._lazy import sympy as sp

if TYPE_CHECKING:
    from derivcheck.expr import OperatorHandler, _Parser

MAX_ORDER = 4
"""Highest total derivative order a case may ask for."""

# -- SymPy ---------------------------------------------------------------------------------


def partial(expr: sp.Expr, *variables: sp.Symbol) -> sp.Expr:
    """Unevaluated ``d^n expr / d v1 d v2 ...`` (repeat a variable for higher order)."""
    return sp.Derivative(expr, *variables)


def gradient(expr: sp.Expr, variables: Sequence[sp.Symbol]) -> list[sp.Expr]:
    """``[d expr / d v for v in variables]``."""
    return [sp.Derivative(expr, v) for v in variables]


def divergence(components: Sequence[sp.Expr], variables: Sequence[sp.Symbol]) -> sp.Expr:
    """``sum_i d c_i / d v_i``; needs one component per variable."""
    if len(components) != len(variables):
        raise ValueError(f"divergence needs {len(variables)} components, got {len(components)}")
    return sp.Add(*[sp.Derivative(c, v) for c, v in zip(components, variables)])


def laplacian(expr: sp.Expr, variables: Sequence[sp.Symbol]) -> sp.Expr:
    """``sum_v d^2 expr / d v^2``."""
    return sp.Add(*[sp.Derivative(expr, (v, 2)) for v in variables])


def hessian(expr: sp.Expr, variables: Sequence[sp.Symbol]) -> sp.Matrix:
    """The matrix of second derivatives ``H[i, j] = d^2 expr / d v_i d v_j``."""
    return sp.Matrix([[sp.Derivative(expr, a, b) if a != b else sp.Derivative(expr, (a, 2)) for b in variables] for a in variables])


def advection(expr: sp.Expr, velocity: Sequence[sp.Expr], variables: Sequence[sp.Symbol]) -> sp.Expr:
    """``velocity . grad(expr)``."""
    if len(velocity) != len(variables):
        raise ValueError(f"advection needs {len(variables)} velocity components, got {len(velocity)}")
    return sp.Add(*[c * sp.Derivative(expr, v) for c, v in zip(velocity, variables)])


# -- torch ---------------------------------------------------------------------------------


def torch_derivative(y: Any, x: Any) -> Any:
    """``d y / d x`` pointwise for ``y`` and leaf ``x`` of shape ``(P,)``, with
    ``create_graph=True``. A ``y`` that does not depend on ``x`` gives zeros."""
    import torch

    if not y.requires_grad:  # a constant (or a derivative that came out constant): zero
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y), create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def torch_partial(y: Any, *xs: Any) -> Any:
    """Repeated :func:`torch_derivative`: ``torch_partial(u, x, x)`` is ``u_xx``."""
    for x in xs:
        y = torch_derivative(y, x)
    return y


def torch_gradient(y: Any, xs: Sequence[Any]) -> list[Any]:
    return [torch_derivative(y, x) for x in xs]


def torch_gradient_all(y: Any, xs: Sequence[Any]) -> list[Any]:
    """``[dy/dx for x in xs]`` from a single ``autograd.grad`` call (one backward pass)."""
    import torch

    if not y.requires_grad:
        return [torch.zeros_like(x) for x in xs]
    grads = torch.autograd.grad(y, list(xs), grad_outputs=torch.ones_like(y), create_graph=True, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, xs)]


def torch_divergence(components: Sequence[Any], xs: Sequence[Any]) -> Any:
    return sum(torch_derivative(c, x) for c, x in zip(components, xs))


def torch_laplacian(y: Any, xs: Sequence[Any]) -> Any:
    return sum(torch_partial(y, x, x) for x in xs)


def torch_hessian(y: Any, xs: Sequence[Any]) -> Any:
    """``(P, d, d)`` Hessian by nested autograd."""
    import torch

    first = torch_gradient(y, xs)
    return torch.stack([torch.stack([torch_derivative(g, x) for x in xs], dim=-1) for g in first], dim=-2)


def torch_advection(y: Any, velocity: Sequence[Any], xs: Sequence[Any]) -> Any:
    return sum(c * torch_derivative(y, x) for c, x in zip(velocity, xs))


# -- parsing -------------------------------------------------------------------------------


@dataclass
class OperatorRecord:
    """Operators met while parsing, in order: ``(source text, SymPy expression)``."""

    used: list[tuple[str, sp.Expr]] = field(default_factory=list)

    def add(self, text: str, expr: sp.Expr) -> None:
        if all(text != t for t, _ in self.used):
            self.used.append((text, expr))


def _canonical(text: str) -> str:
    return "".join(text.split())


def operator_handlers(
    variables: Mapping[str, sp.Symbol],
    spatial: Sequence[str],
    record: OperatorRecord | None = None,
    max_order: int = MAX_ORDER,
) -> dict[str, "OperatorHandler"]:
    """Parser handlers for ``d``, ``laplacian``, ``div`` and ``advect``.

    `variables` are all independent variables; `spatial` names those the spatial operators
    act on (all but time). Every operator application is added to `record`.
    """
    spatial_symbols = [variables[v] for v in spatial]
    declared = ", ".join(variables)

    def source(parser: "_Parser", node: ast.Call) -> str:
        return _canonical(ast.get_source_segment(parser.text, node) or ast.unparse(node))

    def variable(parser: "_Parser", node: ast.AST, op: str) -> sp.Symbol:
        if not isinstance(node, ast.Name):
            raise parser.fail(f"{op}(): expected a variable name here; declared variables: {declared}", node)
        if node.id not in variables:
            raise parser.fail(f"{op}(): {node.id!r} is not a declared variable; declared variables: {declared}", node)
        return variables[node.id]

    def d(parser: "_Parser", node: ast.Call, depth: int) -> sp.Expr:
        if len(node.args) < 2:
            raise parser.fail("d() needs an expression and at least one variable, e.g. d(u, x) or d(u, x, 2)", node)
        inner = parser.expression(node.args[0], depth + 1)
        counts: list[tuple[sp.Symbol, int]] = []
        for arg in node.args[1:]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, int) and not isinstance(arg.value, bool):
                if not counts:
                    raise parser.fail("d(): an order must follow a variable, as in d(u, x, 2)", arg)
                if arg.value < 1:
                    raise parser.fail(f"d(): derivative order must be >= 1, got {arg.value}", arg)
                sym, _ = counts[-1]
                counts[-1] = (sym, arg.value)
            else:
                counts.append((variable(parser, arg, "d"), 1))
        total = sum(n for _, n in counts)
        if total > max_order:
            raise parser.fail(f"d(): derivative order {total} is beyond the supported maximum {max_order}", node)
        expr = sp.Derivative(inner, *counts)
        if record is not None:
            record.add(source(parser, node), expr)
        return expr

    def lap(parser: "_Parser", node: ast.Call, depth: int) -> sp.Expr:
        if len(node.args) != 1:
            raise parser.fail(f"laplacian() takes 1 argument, got {len(node.args)}", node)
        if not spatial_symbols:
            raise parser.fail("laplacian(): no spatial variables are declared", node)
        expr = laplacian(parser.expression(node.args[0], depth + 1), spatial_symbols)
        if record is not None:
            record.add(source(parser, node), expr)
        return expr

    def div(parser: "_Parser", node: ast.Call, depth: int) -> sp.Expr:
        if len(node.args) != len(spatial_symbols):
            raise parser.fail(f"div() takes one component per spatial variable ({', '.join(spatial)}): {len(spatial_symbols)} arguments, got {len(node.args)}", node)
        expr = divergence([parser.expression(a, depth + 1) for a in node.args], spatial_symbols)
        if record is not None:
            record.add(source(parser, node), expr)
        return expr

    def adv(parser: "_Parser", node: ast.Call, depth: int) -> sp.Expr:
        if len(node.args) != 1 + len(spatial_symbols):
            raise parser.fail(f"advect() takes the advected expression and one velocity component per spatial variable: {1 + len(spatial_symbols)} arguments, got {len(node.args)}", node)
        args = [parser.expression(a, depth + 1) for a in node.args]
        expr = advection(args[0], args[1:], spatial_symbols)
        if record is not None:
            record.add(source(parser, node), expr)
        return expr

    return {"d": d, "laplacian": lap, "div": div, "advect": adv}


def derivative_nodes(expr: sp.Expr) -> list[sp.Derivative]:
    """Every ``Derivative`` node of `expr`, outermost first, without duplicates."""
    found: list[sp.Derivative] = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Derivative) and node not in found:
            found.append(node)
    return found


def derivative_name(node: sp.Derivative) -> str:
    """``u_xx`` for ``Derivative(u(x, y), (x, 2))`` when the field and variable names are
    single letters; else ``d(expr; x, x)``."""
    inner = node.expr
    variables = [str(v) for v, n in node.variable_count for _ in range(int(n))]
    if isinstance(inner, sp.core.function.AppliedUndef) and all(len(v) == 1 for v in variables):
        return f"{inner.func.__name__}_{''.join(variables)}"
    shown = str(inner)
    for f in inner.atoms(sp.core.function.AppliedUndef):
        shown = shown.replace(str(f), f.func.__name__)
    return f"d({shown}; {', '.join(variables)})"
