"""Helpers shared by the tests (importable as ``helpers``: ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from derivcheck.layers import LAYERS, LOSSES
from derivcheck.problem import Network, Problem

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "cases"


def layer(kind: str, **options) -> object:
    """Build a catalog layer the way a case file would."""
    return LAYERS[kind].from_spec({"layer": kind, **options}, file=None, key="test", type_key="layer")


def make_problem(specs, loss: str | None = "mse", batch: int = 5, seed: int = 0, dtype: str = "float64", sgd_lr=None, in_shape=None) -> Problem:
    """A problem from ``[("linear", {"in": 3, "out": 4}), ("tanh", {}), ...]`` with seeded
    random inputs and targets; `in_shape` is the per-sample input shape when the first
    layer is not linear."""
    layers = [layer(kind, **opts) for kind, opts in specs]
    network = Network.build(layers, in_shape=in_shape)
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((batch, network.in_size))
    loss_obj = LOSSES[loss]() if loss else None
    targets = loss_obj.random_targets(rng, batch, network.out_size) if loss_obj else None
    return Problem(network, network.init_params(seed), x, loss_obj, targets, dtype=dtype, sgd_lr=sgd_lr)
