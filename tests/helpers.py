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


GOLDEN = ROOT / "tests" / "golden"


def normalize_explanation(markdown: str) -> str:
    """An explanation's Markdown without what rounding decides: every ``max relative
    difference 1.2e-16`` becomes ``max relative difference <small>`` (the digits below the
    check tolerance vary with the BLAS)."""
    import re

    return re.sub(r"max relative difference [0-9.]+e[+-][0-9]+", "max relative difference <small>", markdown)


def assert_golden(text: str, name: str) -> None:
    """Compare `text` with ``tests/golden/<name>``; ``DERIVCHECK_UPDATE_GOLDEN=1`` rewrites it."""
    import os

    path = GOLDEN / name
    if os.environ.get("DERIVCHECK_UPDATE_GOLDEN") == "1" or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if os.environ.get("DERIVCHECK_UPDATE_GOLDEN") != "1":
            raise AssertionError(f"{path} did not exist: written now, check it and run again")
    assert text == path.read_text(encoding="utf-8"), f"differs from {path} (DERIVCHECK_UPDATE_GOLDEN=1 rewrites it)"
