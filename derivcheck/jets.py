"""Forward-mode second-order jets of a network, written by hand in numpy.

For inputs ``points`` ``(P, d)`` a jet carries, through every layer, the values ``h``
``(P, n)``, their Jacobian w.r.t. the inputs ``J`` ``(P, n, d)`` and Hessian ``H``
``(P, n, d, d)``. Each layer's :meth:`~derivcheck.layers.base.Layer.numpy_jet` propagates
them with its hand-written first and second derivatives (``tanh' = 1 - t^2``,
``tanh'' = -2 t (1 - t^2)``, ...). This is a *forward* pass: the numpy engine reads field
derivatives off it, and the finite-difference engine perturbs parameters around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.evaluate import Evaluator
from derivcheck.fields import FieldProblem, expand_derivatives, field_derivative_key
from derivcheck.operators import derivative_nodes
from derivcheck.problem import Network
from derivcheck.expr import NUMPY_MODULES


class JetUnsupported(Exception):
    """A layer has no hand-written jet, or a derivative of order > 2 was asked for."""


def network_jets(network: Network, params: dict[str, np.ndarray], points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, J, H)`` of the network outputs at `points` (see the module docstring)."""
    p, d = points.shape
    h = points.astype(np.float64)
    jac = np.broadcast_to(np.eye(d), (p, d, d)).copy()
    hess = np.zeros((p, d, d, d))
    for index, layer in enumerate(network.layers):
        try:
            h, jac, hess = layer.numpy_jet(h, jac, hess, network.layer_params(params, index))
        except NotImplementedError:
            raise JetUnsupported(f"layer {index} ({layer.describe()}) has no hand-written second-order jet") from None
    return h, jac, hess


def jet_value(h: np.ndarray, jac: np.ndarray, hess: np.ndarray, field_index: int, indices: tuple[int, ...]) -> np.ndarray:
    """One field derivative read off a jet: ``indices`` are variable indices (order <= 2)."""
    if len(indices) == 0:
        return h[:, field_index]
    if len(indices) == 1:
        return jac[:, field_index, indices[0]]
    if len(indices) == 2:
        return hess[:, field_index, indices[0], indices[1]]
    raise JetUnsupported(f"second-order jets cannot give a derivative of order {len(indices)}")


class JetExpression:
    """An expression prepared once (constants substituted, derivatives expanded onto the
    fields, each derivative mapped to a jet entry) and evaluated on any jets."""

    def __init__(self, problem: FieldProblem, expr: sp.Expr):
        spec = problem.spec
        self.problem = problem
        self.expanded = expand_derivatives(spec.with_constants(expr))
        self.keys = {node: field_derivative_key(node, spec.variable_symbols) for node in derivative_nodes(self.expanded)}
        for _, indices in self.keys.values():
            if len(indices) > 2:
                raise JetUnsupported(f"second-order jets cannot give a derivative of order {len(indices)}")
        self.field_index = {name: i for i, name in enumerate(spec.fields)}

    def __call__(self, jets: tuple[np.ndarray, np.ndarray, np.ndarray], points: np.ndarray) -> np.ndarray:
        h, jac, hess = jets
        spec = self.problem.spec

        def derivative(node: sp.Derivative) -> Any:
            name, indices = self.keys[node]
            return jet_value(h, jac, hess, self.field_index[name], indices)

        env = {s: points[:, i] for i, s in enumerate(spec.variable_symbols)}
        fields = {name: h[:, i] for name, i in self.field_index.items()}
        with np.errstate(all="ignore"):
            out = Evaluator("numpy", env, fields, derivative, like=points[:, 0])(self.expanded)
        return np.broadcast_to(np.asarray(out, dtype=float), (points.shape[0],)).copy()


def evaluate_with_jets(problem: FieldProblem, expr: sp.Expr, jets: tuple[np.ndarray, np.ndarray, np.ndarray], points: np.ndarray) -> np.ndarray:
    """Evaluate `expr` with the field values and derivatives taken from `jets`."""
    return JetExpression(problem, expr)(jets, points)


class PinnLossesNumpy:
    """``(L_r, L_b)`` in float64 from the jets, for any parameters (see
    :mod:`derivcheck.fields`); the expressions are prepared once."""

    def __init__(self, problem: FieldProblem):
        assert problem.network is not None and problem.boundary is not None
        self.problem = problem
        spec = problem.spec
        self.residuals = [JetExpression(problem, spec.residual_expr(eq)) for eq in spec.equations]
        symbols = spec.variable_symbols
        self.exact = {
            spec.fields.index(name): np.broadcast_to(np.asarray(sp.lambdify([symbols], expr, modules=NUMPY_MODULES)(list(problem.boundary.T)), dtype=float), (problem.boundary.shape[0],))
            for name, expr in problem.solution_exprs().items()
        }

    def __call__(self, params: dict[str, np.ndarray]) -> tuple[float, float]:
        problem = self.problem
        assert problem.network is not None and problem.boundary is not None
        jets = network_jets(problem.network, params, problem.points)
        loss_r = float(np.mean(sum(r(jets, problem.points) ** 2 for r in self.residuals)))
        h, _, _ = network_jets(problem.network, params, problem.boundary)
        loss_b = float(np.mean(sum((h[:, i] - exact) ** 2 for i, exact in self.exact.items())))
        return loss_r, loss_b
