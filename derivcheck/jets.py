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


def network_jets(network: Network, params: dict[str, np.ndarray], points: np.ndarray, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(h, J, H)`` of the network outputs at `points` (see the module docstring); with
    `stop`, of the input of layer `stop` instead."""
    p, d = points.shape
    h = points.astype(np.float64)
    jac = np.broadcast_to(np.eye(d), (p, d, d)).copy()
    hess = np.zeros((p, d, d, d))
    for index, layer in enumerate(network.layers[:stop]):
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
        # the boundary loss needs the values only: a plain forward pass, not a jet
        return loss_r, self._boundary_loss(self._boundary_values(params)[None])[0]

    def _boundary_values(self, params: dict[str, np.ndarray], stop: int | None = None) -> np.ndarray:
        """The network's outputs at the boundary points (with `stop`, the input of layer `stop`)."""
        assert self.problem.network is not None and self.problem.boundary is not None
        h = self.problem.boundary.astype(np.float64)
        for index, layer in enumerate(self.problem.network.layers[:stop]):
            h, _ = layer.numpy_forward(h, self.problem.network.layer_params(params, index))
        return h

    def _boundary_loss(self, h: np.ndarray) -> np.ndarray:
        """``L_b`` of each of B boundary outputs ``(B, P_b, fields)``."""
        return np.mean(sum((h[:, :, i] - exact) ** 2 for i, exact in self.exact.items()), axis=1)

    def stackable(self) -> bool:
        """Whether every layer acts on points independently and draws nothing per point,
        so that several passes may run stacked along the point axis."""
        assert self.problem.network is not None
        return all(layer.per_sample and not layer.n_sample_constants for layer in self.problem.network.layers)

    def inputs_of(self, params: dict[str, np.ndarray], layer: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        """The jets at the collocation points and the values at the boundary points that
        layer `layer` receives (what :meth:`moved` starts from)."""
        assert self.problem.network is not None
        return network_jets(self.problem.network, params, self.problem.points, stop=layer), self._boundary_values(params, stop=layer)

    def moved(
        self, params: dict[str, np.ndarray], layer: int, inputs: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray], variants: list[dict[str, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(L_r, L_b)``, each ``(B,)``, for B variants of layer `layer`'s local
        parameters (every other layer as in `params`), from that layer's `inputs`
        (:meth:`inputs_of`). Requires :meth:`stackable`: the layers after it run once on
        the B passes stacked along the point axis."""
        problem = self.problem
        network = problem.network
        assert network is not None and problem.boundary is not None
        (h, jac, hess), hb = inputs
        count, p = len(variants), problem.points.shape[0]
        outs = [network.layers[layer].numpy_jet(h, jac, hess, local) for local in variants]
        jets = (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), np.concatenate([o[2] for o in outs]))
        hb_all = np.concatenate([network.layers[layer].numpy_forward(hb, local)[0] for local in variants])
        for index in range(layer + 1, len(network.layers)):
            local = network.layer_params(params, index)
            jets = network.layers[index].numpy_jet(*jets, local)
            hb_all, _ = network.layers[index].numpy_forward(hb_all, local)
        points = np.tile(problem.points, (count, 1))
        squares = np.sum([r(jets, points) ** 2 for r in self.residuals], axis=0)
        loss_r = squares.reshape(count, p).mean(axis=1)
        return loss_r, self._boundary_loss(hb_all.reshape(count, problem.boundary.shape[0], -1))
