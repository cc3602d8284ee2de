"""Field problems in the finite-difference engine.

Fields are evaluated in float64 (the exact solution through ``lambdify``; a network through
the layers' numpy forward), never differentiated. Each quantity is first rewritten so that
every derivative is a derivative of a field (product/chain rule by SymPy), then each field
derivative is approximated by a tensor-product central stencil (all O(h^2)):

- 1st: ``[-1/2, 0, 1/2] / h``; 2nd: ``[1, -2, 1] / h^2``; 3rd: ``[-1/2, 1, 0, -1, 1/2] / h^3``;
  4th: ``[1, -4, 6, -4, 1] / h^4``; mixed derivatives multiply the 1-D stencils.

Richardson extrapolation over steps h, h/2, h/4 gives the value and an error estimate
``|R(h) - R(h/2)|`` plus the stencil's rounding bound ``eps * sum|w_k f_k|``; the base step
is ``eps^(1/(n+4)) * max(1, |x|)`` for a derivative of total order n. Node errors are
propagated to the quantity to first order (re-evaluating it with each node shifted by its
error). A stencil that straddles a kink of the exact solution (a sign change of an
``abs``/``max`` argument) excludes that point.

The engine always runs in float64 -- in float32, second differences lose every digit
(``eps32 / h^2`` is ~1e-1 at the best step) -- and says so when the problem's dtype is
float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.evaluate import Evaluator
from derivcheck.fields import FieldProblem, FieldQuantity, expand_derivatives, field_derivative_key, kink_arguments, lambda_hat
from derivcheck.jets import PinnLossesNumpy
from derivcheck.operators import derivative_nodes
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.expr import NUMPY_MODULES

EPS = float(np.finfo(np.float64).eps)

STENCILS: dict[int, list[tuple[int, float]]] = {
    1: [(-1, -0.5), (1, 0.5)],
    2: [(-1, 1.0), (0, -2.0), (1, 1.0)],
    3: [(-2, -0.5), (-1, 1.0), (1, -1.0), (2, 0.5)],
    4: [(-2, 1.0), (-1, -4.0), (0, 6.0), (1, -4.0), (2, 1.0)],
}


class _Forward:
    """Float64 field values (and kink-argument signs) at arbitrary points."""

    def __init__(self, problem: FieldProblem):
        self.problem = problem
        symbols = problem.spec.variable_symbols
        self.kinks: list[Any] = []
        if problem.kind == "exact":
            exprs = problem.solution_exprs()
            self.functions = {name: sp.lambdify([symbols], expr, modules=NUMPY_MODULES) for name, expr in exprs.items()}
            for expr in exprs.values():
                self.kinks.extend(sp.lambdify([symbols], arg, modules=NUMPY_MODULES) for arg in kink_arguments(expr))

    def fields(self, points: np.ndarray) -> dict[str, np.ndarray]:
        n = points.shape[0]
        if self.problem.kind == "exact":
            with np.errstate(all="ignore"):
                return {name: np.broadcast_to(np.asarray(fn(list(points.T)), dtype=float), (n,)).copy() for name, fn in self.functions.items()}
        network, params = self.problem.network, self.problem.params
        assert network is not None and params is not None
        h = points
        for index, layer in enumerate(network.layers):
            h, _ = layer.numpy_forward(h, network.layer_params(params, index))
        return {name: h[:, i] for i, name in enumerate(self.problem.spec.fields)}

    def kink_signs(self, points: np.ndarray) -> list[np.ndarray]:
        with np.errstate(all="ignore"):
            return [np.broadcast_to(np.asarray(fn(list(points.T)), dtype=float), (points.shape[0],)) > 0 for fn in self.kinks]


class FieldDifferences:
    """The finite-difference evaluation of one field problem."""

    def __init__(self, problem: FieldProblem, method: str, step: float | None):
        self.problem = problem
        self.method = method
        self.step = step
        self.forward = _Forward(problem)
        self.base_fields = self.forward.fields(problem.points)
        self.base_kinks = self.forward.kink_signs(problem.points)
        self.cache: dict[tuple[str, tuple[int, ...]], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def levels(self) -> list[float]:
        return [1.0, 0.5, 0.25] if self.method == "richardson" else [1.0, 0.5]

    def base_step(self, order: int) -> float:
        if self.step is not None:
            return self.step
        return EPS ** (1 / (order + (4 if self.method == "richardson" else 2)))

    def _stencil(self, name: str, counts: dict[int, int], h: np.ndarray, track_kinks: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One tensor-product central stencil of field `name` with per-point, per-variable
        steps `h` ``(P, d)``: (value, sum of |w_k f_k| for the rounding bound, points whose
        stencil straddles a kink -- only when `track_kinks`)."""
        points = self.problem.points
        total = np.zeros(points.shape[0])
        magnitude = np.zeros(points.shape[0])
        crossed = np.zeros(points.shape[0], dtype=bool)
        for combo in itertools.product(*[STENCILS[counts[v]] for v in counts]):
            shift = np.zeros_like(points)
            weight = np.ones(points.shape[0])
            for v, (offset, w) in zip(counts, combo):
                shift[:, v] = offset * h[:, v]
                weight = weight * w / h[:, v] ** counts[v]
            shifted = points + shift
            values = self.forward.fields(shifted)[name]
            total += weight * values
            magnitude += np.abs(weight * values)
            if track_kinks and self.base_kinks:
                for a, b in zip(self.forward.kink_signs(shifted), self.base_kinks):
                    crossed |= a != b
        return total, magnitude, crossed

    def node(self, key: tuple[str, tuple[int, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, error estimate, excluded mask) of one field derivative at every point."""
        if key in self.cache:
            return self.cache[key]
        name, indices = key
        points = self.problem.points
        counts = {v: indices.count(v) for v in sorted(set(indices))}
        order = len(indices)
        scale = np.maximum(1.0, np.abs(points))  # (P, d)
        h0 = self.base_step(order)
        estimates, roundings = [], []
        excluded = np.zeros(points.shape[0], dtype=bool)
        for level, mult in enumerate(self.levels()):
            total, magnitude, crossed = self._stencil(name, counts, h0 * mult * scale, track_kinks=level == 0)
            estimates.append(total)
            roundings.append(4 * EPS * magnitude)
            excluded |= crossed
        if self.method == "richardson":
            r1 = (4 * estimates[1] - estimates[0]) / 3
            r2 = (4 * estimates[2] - estimates[1]) / 3
            value, error = r2, np.abs(r1 - r2) + 2 * roundings[2]
        else:
            value, error = estimates[0], 4 / 3 * np.abs(estimates[0] - estimates[1]) + roundings[0]
        self.cache[key] = (value, error, excluded)
        return self.cache[key]

    def study(self, key: tuple[str, tuple[int, ...]], decades: int = 7) -> dict:
        """Step-size study of one field derivative: for h = 10^-1 ... 10^-decades (half
        decades), the max over points of ``|D(h) - D(h/2)|`` of the plain central stencil."""
        name, indices = key
        points = self.problem.points
        counts = {v: indices.count(v) for v in sorted(set(indices))}
        scale = np.maximum(1.0, np.abs(points))

        def central(h0: float) -> np.ndarray:
            return self._stencil(name, counts, h0 * scale)[0]

        steps = [10.0 ** (-k / 2) for k in range(2, 2 * decades + 1)]
        errors = [float(np.nanmax(np.abs(central(h) - central(h / 2)))) for h in steps]
        return {"h": steps, "error": errors, "chosen": self.base_step(len(indices))}

    def evaluate(self, expr: sp.Expr) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Value, propagated error estimate and excluded mask of `expr` at the points."""
        spec = self.problem.spec
        expanded = expand_derivatives(spec.with_constants(expr))
        nodes = derivative_nodes(expanded)
        keys = {node: field_derivative_key(node, spec.variable_symbols) for node in nodes}
        values = {node: self.node(keys[node]) for node in nodes}
        points = self.problem.points
        env = {s: points[:, i] for i, s in enumerate(spec.variable_symbols)}

        def run(shifted: sp.Derivative | None = None) -> np.ndarray:
            def derivative(node: sp.Derivative) -> np.ndarray:
                value, error, _ = values[node]
                return value + error if node == shifted else value

            with np.errstate(all="ignore"):
                out = Evaluator("numpy", env, self.base_fields, derivative, like=points[:, 0])(expanded)
            return np.broadcast_to(np.asarray(out, dtype=float), (points.shape[0],)).copy()

        value = run()
        error = np.zeros_like(value)
        excluded = np.zeros(points.shape[0], dtype=bool)
        for node in nodes:
            error += np.abs(run(node) - value)
            excluded |= values[node][2]
        return value, error, excluded


def _with_floor(errors: np.ndarray) -> np.ndarray:
    """Error estimates no smaller than a tenth of their median over the points: the
    estimate of one point (the difference between two Richardson levels) can vanish by
    chance where the two levels happen to agree, and among 100,000 points a few do -- a
    false disagreement at rounding level. A field's truncation error varies smoothly over
    the points, so the median is a fair floor; a wrong derivative is still far above it."""
    finite = np.abs(errors[np.isfinite(errors)])
    if finite.size < 8:
        return errors
    return np.maximum(errors, 0.1 * float(np.median(finite)))


def compute_fields(problem: FieldProblem, quantities: Sequence[FieldQuantity], method: str, step: float | None) -> EngineResult:
    fd = FieldDifferences(problem, method, step)
    spec = problem.spec
    note = f"{method}, float64" + (" (float32 finite differences of second derivatives would be meaningless: the reference stays float64)" if problem.dtype == "float32" else "")
    result: EngineResult = {}

    def value(v: np.ndarray, e: np.ndarray, x: np.ndarray) -> EngineValue:
        return EngineValue(v, error_estimate=_with_floor(e), excluded=x if x.any() else None, excluded_reason="the difference stencil straddles a kink of the solution" if x.any() else "", note=note)

    for q in quantities:
        if q.kind in ("derivative", "operator", "residual"):
            result[q.name] = value(*fd.evaluate(q.expr))
            if q.kind == "derivative" and isinstance(q.expr.expr, sp.core.function.AppliedUndef):
                computed = result[q.name]
                assert isinstance(computed, EngineValue)
                computed.study = fd.study(field_derivative_key(q.expr, spec.variable_symbols))
        elif q.kind == "forcing":
            assert q.equation is not None
            rest, coefficient = spec.source_coefficient(q.equation)
            result[q.name] = value(*fd.evaluate(-rest / coefficient))
        elif q.kind in ("grad", "hessian"):
            u = spec.field_funcs[q.field_name]  # type: ignore[index]
            syms = spec.variable_symbols
            if q.kind == "grad":
                parts = [fd.evaluate(sp.Derivative(u, s)) for s in syms]
                stack = [np.stack([p[i] for p in parts], axis=-1) for i in range(2)]
                excl = np.any([p[2] for p in parts], axis=0)
                result[q.name] = value(stack[0], stack[1], np.broadcast_to(excl[:, None], stack[0].shape).copy())
            else:
                grid = [[fd.evaluate(sp.Derivative(u, a, b)) for b in syms] for a in syms]
                vals = np.stack([np.stack([g[0] for g in row], axis=-1) for row in grid], axis=-2)
                errs = np.stack([np.stack([g[1] for g in row], axis=-1) for row in grid], axis=-2)
                excl = np.any([g[2] for row in grid for g in row], axis=0)
                result[q.name] = value(vals, errs, np.broadcast_to(excl[:, None, None], vals.shape).copy())
        elif q.kind in ("pinn_grad", "lambda_hat", "pinn_directions"):
            continue
        else:
            result[q.name] = Skipped(f"finite differences do not compute {q.kind} quantities")
    pinn = [q for q in quantities if q.kind in ("pinn_grad", "lambda_hat")]
    directions = [q for q in quantities if q.kind == "pinn_directions"]
    if directions:
        # too many parameters to difference each: the directional derivatives only
        total = sum(int(np.prod(v.shape)) for v in problem.params.values())  # type: ignore[union-attr, misc]
        reason = f"{total:,} parameters: differencing each would take {4 * total:,} evaluations of the PINN losses; finite differences check dL_r/dparams·v and dL_b/dparams·v instead"
        result.update({q.name: Skipped(reason) for q in pinn})
        result.update(_pinn_directions(problem, directions))
    elif pinn:
        result.update(_pinn(problem, pinn))
    return result


def _pinn_directions(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    """``dL_r/dtheta · v_k`` and ``dL_b/dtheta · v_k`` along the fixed directions of
    :func:`~derivcheck.quantities.param_directions` (all parameters move at once), by
    Richardson differences of the float64 jets' losses."""
    from derivcheck.quantities import param_directions

    assert problem.params is not None and problem.network is not None
    losses = PinnLossesNumpy(problem)
    refs = list(problem.network.params())
    sizes = [int(np.prod(ref.shape)) for ref in refs]
    directions = param_directions(sum(sizes))
    step = EPS ** (1 / 5)
    values = {"r": np.empty(len(directions)), "b": np.empty(len(directions))}
    errors = {"r": np.empty(len(directions)), "b": np.empty(len(directions))}
    for k, v in enumerate(directions):
        pieces = np.split(v, np.cumsum(sizes)[:-1])
        quotients = []
        scale = np.abs(np.asarray(losses(problem.params)))
        for mult in (1.0, 0.5, 0.25):
            sides = []
            for sign in (1.0, -1.0):
                moved = {ref.qualified: problem.params[ref.qualified] + sign * mult * step * piece.reshape(ref.shape) for ref, piece in zip(refs, pieces)}
                sides.append(np.asarray(losses({**problem.params, **moved})))
            scale = np.maximum(scale, np.maximum(np.abs(sides[0]), np.abs(sides[1])))
            quotients.append((sides[0] - sides[1]) / (2 * mult * step))
        r1 = (4 * quotients[1] - quotients[0]) / 3
        r2 = (4 * quotients[2] - quotients[1]) / 3
        estimate = np.abs(r1 - r2) + 10 * EPS * scale / (step * 0.25)
        for t, i in (("r", 0), ("b", 1)):
            values[t][k], errors[t][k] = r2[i], estimate[i]
    note = "Richardson differences along random directions of all parameters (float64 jets)"
    return {q.name: EngineValue(values[q.term], error_estimate=errors[q.term], note=note) for q in quantities}  # type: ignore[index]


def _pinn(problem: FieldProblem, quantities: Sequence[FieldQuantity]) -> EngineResult:
    """PINN-loss gradients by central differences in the parameters; the loss's spatial
    derivatives come from the float64 forward-mode jets of the network (order <= 2): a
    forward pass, perturbed, never a backward one."""

    assert problem.params is not None and problem.network is not None
    losses = PinnLossesNumpy(problem)
    params = {k: v.copy() for k, v in problem.params.items()}
    eps_step = EPS ** (1 / 3)
    mults = (1.0, 0.5)
    refs = {ref.qualified: ref for ref in problem.network.params()}
    grads: dict[str, dict[str, np.ndarray]] = {"r": {}, "b": {}}
    errors: dict[str, dict[str, np.ndarray]] = {"r": {}, "b": {}}
    for name, original in problem.params.items():
        indices = list(np.ndindex(*original.shape))
        steps = np.array([eps_step * max(1.0, abs(float(original[index]))) for index in indices])
        requests = [(index, sign * mult * h) for index, h in zip(indices, steps) for mult in mults for sign in (1.0, -1.0)]
        sides = _pinn_sides(problem, losses, params, refs[name], requests).reshape(len(indices), len(mults), 2, 2)  # entry, step, side, (L_r, L_b)
        params[name] = original
        for t, k in (("r", 0), ("b", 1)):
            diffs = [(sides[:, m, 0, k] - sides[:, m, 1, k]) / (2 * mult * steps) for m, mult in enumerate(mults)]
            rounding = 10 * EPS * np.maximum(1.0, np.abs(sides[:, -1, 0, k])) / steps
            grads[t][name] = diffs[0].reshape(original.shape)
            errors[t][name] = (4 / 3 * np.abs(diffs[0] - diffs[1]) + rounding).reshape(original.shape)
    result: EngineResult = {}
    note = "central differences in the parameters of a float64 forward (hand-written jets)"
    for q in quantities:
        if q.kind == "pinn_grad":
            result[q.name] = EngineValue(grads[q.term][q.param], error_estimate=errors[q.term][q.param], note=note)  # type: ignore[index]
        else:
            weights = [n for n in grads["r"] if n.endswith("weight")]
            value = lambda_hat(grads["r"], grads["b"], weights, problem.lambda_b)
            # first-order propagation of the gradients' error estimates into the ratio
            top = max(float(np.abs(grads["r"][w]).max()) for w in weights)
            top_err = max(float(errors["r"][w].max()) for w in weights)
            mean = float(np.mean(np.concatenate([np.abs(grads["b"][w]).ravel() for w in weights])))
            mean_err = float(np.mean(np.concatenate([errors["b"][w].ravel() for w in weights])))
            estimate = value * (top_err / top + mean_err / mean)
            result[q.name] = EngineValue(np.asarray(value), error_estimate=np.asarray(estimate), note=note)
    return result


PINN_STACK_POINTS = 1 << 16
"""Collocation points one stacked pass of :func:`_pinn_sides` may hold (its Hessian jet is
``points x width x d x d`` numbers)."""


def _pinn_sides(problem: FieldProblem, losses: PinnLossesNumpy, params: dict[str, np.ndarray], ref: Any, requests: list[tuple[tuple[int, ...], float]]) -> np.ndarray:
    """``(L_r, L_b)`` for each (index, delta) of `requests`: the parameter `ref` with that
    entry moved by delta, ``(R, 2)``. When the layers allow it the passes share the
    layers before `ref`'s and run the rest stacked along the point axis, in chunks."""
    original = params[ref.qualified]
    out = np.empty((len(requests), 2))
    if not losses.stackable():
        for r, (index, delta) in enumerate(requests):
            moved = original.copy()
            moved[index] += delta
            out[r] = losses({**params, ref.qualified: moved})
        return out
    assert problem.network is not None
    local = problem.network.layer_params(params, ref.layer)
    inputs = losses.inputs_of(params, ref.layer)
    chunk = max(1, PINN_STACK_POINTS // max(1, problem.points.shape[0]))
    for start in range(0, len(requests), chunk):
        variants = []
        for index, delta in requests[start : start + chunk]:
            moved = original.copy()
            moved[index] += delta
            variants.append({**local, ref.local: moved})
        loss_r, loss_b = losses.moved(params, ref.layer, inputs, variants)
        out[start : start + len(variants), 0], out[start : start + len(variants), 1] = loss_r, loss_b
    return out
