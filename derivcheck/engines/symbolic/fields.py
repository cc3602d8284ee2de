"""Field problems in the symbolic engine.

- **Exact fields**: SymPy substitutes the manufactured solution and differentiates the
  closed form (``.doit()``); forcing terms are derived by solving the equation for its
  source. Everything is compiled with ``lambdify(..., cse=True)``. Derivatives of
  non-smooth solutions produce ``DiracDelta`` terms; they vanish away from the kink and
  the points at the kink are reported as kinks.
- **Network fields**: differentiating a network's closed form blows up (a [2, 8, 8, 1]
  tanh net takes ~3 s, [2, 20, 20, 20, 1] ~7 minutes), so the chain rule composes local
  derivatives in forward mode: ``J' = J_loc J`` and
  ``H'_k = sum_i J_loc[k,i] H_i + sum_ij H_loc[k,i,j] J_i J_j^T``. A dense layer's local
  derivatives come from its one derived product term and an activation's from its one
  derived unit (``f``, ``f'``, ``f''``; :mod:`~derivcheck.engines.symbolic.products`), applied
  as matrix products, so a [2, 50, 50, 50, 1] PINN costs what one tanh derivation costs;
  other layers are derived whole (element symbols, local Jacobian and Hessian).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast


import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.fields import FieldProblem, FieldQuantity, drop_dirac, expand_derivatives, field_derivative_key
from derivcheck.operators import derivative_nodes
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.engines.symbolic.layers import CompiledLayer, compile_layer
from derivcheck import compile_cache
from derivcheck.expr import NUMPY_MODULES, make_symbol


class _FieldFunction:
    """One compiled field expression, storable in the compile cache (kind ``field``)."""

    def __init__(self, function: Any):
        self.function = function

    def to_record(self) -> dict[str, Any]:
        return {"functions": {"field": compile_cache.function_source(self.function)}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "_FieldFunction":
        return cls(compile_cache.restore(record, "field"))


def _compiled_field(args: list[sp.Symbol], expr: sp.Expr) -> Any:
    """``lambdify(args, expr, cse=True)`` through the compile cache: the closed-form
    derivatives of a manufactured solution (large after ``doit()``) compile once. Dummy
    placeholders are renamed by position so that the key is the same in every process."""
    names = {arg: make_symbol(f"_arg{i}") for i, arg in enumerate(args)}
    stable = [names[a] for a in args]
    expr = expr.xreplace(names)
    content = repr(("field", [a.name for a in stable], sp.srepr(expr)))
    return compile_cache.cached("field", content, lambda: _FieldFunction(sp.lambdify(stable, expr, modules=NUMPY_MODULES, cse=True)), _FieldFunction.from_record).function


def _lambdify_points(expr: sp.Expr, symbols: list[sp.Symbol], points: np.ndarray, extra: dict[sp.Symbol, np.ndarray] | None = None) -> np.ndarray:
    extra = extra or {}
    args = list(symbols) + list(extra)
    fn = _compiled_field(args, expr)
    with np.errstate(all="ignore"):
        out = fn(*list(points.T), *extra.values())
    shape = (points.shape[0],) + np.shape(out)[1:] if np.ndim(out) > 1 else (points.shape[0],)
    return np.broadcast_to(np.asarray(out, dtype=float), shape).copy()


def _exact(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    spec = problem.spec
    constants = spec.constant_values()
    solution = spec.solution_map()
    symbols = spec.variable_symbols
    points = problem.points
    forcing = spec.derived_forcing()
    result: EngineResult = {}
    note = "closed form, lambdify(cse=True)"

    def closed(expr: sp.Expr) -> sp.Expr:
        return drop_dirac(expr.subs(solution).doit().subs(constants))

    for q in quantities:
        if q.kind in ("derivative", "operator", "residual"):
            result[q.name] = EngineValue(_lambdify_points(closed(q.expr), symbols, points), note=note)
        elif q.kind == "forcing":
            result[q.name] = EngineValue(_lambdify_points(forcing[q.equation].subs(constants), symbols, points), note=note)  # type: ignore[index]
        elif q.kind == "grad":
            u = problem.solution_exprs()[q.field_name]  # type: ignore[index]
            parts = [_lambdify_points(drop_dirac(sp.diff(u, s)), symbols, points) for s in symbols]
            result[q.name] = EngineValue(np.stack(parts, axis=-1), note=note)
        elif q.kind == "hessian":
            u = problem.solution_exprs()[q.field_name]  # type: ignore[index]
            rows = [np.stack([_lambdify_points(drop_dirac(sp.diff(u, a, b)), symbols, points) for b in symbols], axis=-1) for a in symbols]
            result[q.name] = EngineValue(np.stack(rows, axis=-2), note=note)
        else:
            result[q.name] = Skipped(f"the symbolic engine does not derive {q.kind} quantities of an exact field")
    return result


def symbolic_jets(problem: FieldProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values, input Jacobians and Hessians of the network outputs at the points, from
    SymPy-derived local derivatives of each layer: ``(P, out)``, ``(P, out, d)``,
    ``(P, out, d, d)``. Internally units come first (``(units, P, ...)``), so that a dense
    layer is one matrix product per jet part."""
    network, params = problem.network, problem.params
    assert network is not None and params is not None
    points = problem.points
    p, d = points.shape
    a = points.T.copy()  # (in, P)
    jac = np.broadcast_to(np.eye(d)[:, None, :], (d, p, d)).copy()  # (units, P, d)
    hess = np.zeros((d, p, d, d))
    for index, (layer, size) in enumerate(zip(network.layers, network.sizes)):
        flat = network.layer_param_array(params, index)
        fast = compile_layer(layer, size)
        if hasattr(fast, "jet_by_unit"):  # a derived product term or unit: matrix products
            a, jac, hess = fast.jet_by_unit(a, jac, hess, flat)
            continue
        compiled = cast(CompiledLayer, compile_layer(layer, size, whole=True))  # whole=True: element expressions
        j_loc = compiled.jacobian(a, flat)  # (P, out, in)
        jac_p, hess_p = jac.transpose(1, 0, 2), hess.transpose(1, 0, 2, 3)
        new_hess = np.einsum("poi,pide->pode", j_loc, hess_p)
        for (k, i, j), values in compiled.hessian_entries(a, flat):
            new_hess[:, k] += values[:, None, None] * jac_p[:, i, :, None] * jac_p[:, j, None, :]
        jac = np.ascontiguousarray(np.matmul(j_loc, jac_p).transpose(1, 0, 2))
        hess = np.ascontiguousarray(new_hess.transpose(1, 0, 2, 3))
        a = compiled.forward(a, flat)
    return a.T.copy(), np.ascontiguousarray(jac.transpose(1, 0, 2)), np.ascontiguousarray(hess.transpose(1, 0, 2, 3))


def _network(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    spec = problem.spec
    h, jac, hess = symbolic_jets(problem)
    field_index = {name: i for i, name in enumerate(spec.fields)}
    symbols = spec.variable_symbols
    note = "SymPy-derived local Jacobians and Hessians, chain rule"
    result: EngineResult = {}

    def evaluate(expr: sp.Expr) -> np.ndarray | Skipped:
        expanded = expand_derivatives(spec.with_constants(expr))
        values: dict[sp.Symbol, np.ndarray] = {}
        replacements: dict[sp.Expr, sp.Symbol] = {}
        for node in derivative_nodes(expanded):
            name, indices = field_derivative_key(node, symbols)
            if len(indices) > 2:
                return Skipped(f"derivative order {len(indices)} is beyond the layer-wise chain rule (order <= 2)")
            placeholder = sp.Dummy(real=True)
            replacements[node] = placeholder
            i = field_index[name]
            values[placeholder] = jac[:, i, indices[0]] if len(indices) == 1 else hess[:, i, indices[0], indices[1]]
        for name, func in spec.field_funcs.items():
            placeholder = sp.Dummy(real=True)
            replacements[func] = placeholder
            values[placeholder] = h[:, field_index[name]]
        return _lambdify_points(expanded.xreplace(replacements), symbols, problem.points, values)

    for q in quantities:
        if q.kind in ("derivative", "operator", "residual"):
            value = evaluate(q.expr)
            result[q.name] = value if isinstance(value, Skipped) else EngineValue(value, note=note)
        elif q.kind == "grad":
            result[q.name] = EngineValue(jac[:, field_index[q.field_name]].copy(), note=note)  # type: ignore[index]
        elif q.kind == "hessian":
            result[q.name] = EngineValue(hess[:, field_index[q.field_name]].copy(), note=note)  # type: ignore[index]
        else:
            result[q.name] = Skipped(f"the symbolic engine does not derive {q.kind} quantities of a network field")
    return result


def compute_fields(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    return _exact(problem, quantities) if problem.kind == "exact" else _network(problem, quantities)
