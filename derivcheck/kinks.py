"""Locate non-differentiable points (kinks) of a network at the problem's inputs.

A kink is a layer input exactly at a point where the layer is not differentiable: a
ReLU or LeakyReLU pre-activation equal to 0. The derivative there is undefined, so engines
may legitimately differ (SymPy's Heaviside(0) is 1/2, autograd uses 0); such entries are
reported as ``kink``, never as agreement or failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derivcheck.problem import Problem


@dataclass(frozen=True)
class Kink:
    """One kink: layer index and kind, sample and unit."""

    layer: int
    kind: str
    sample: int
    unit: int

    def __str__(self) -> str:
        return f"layer {self.layer} ({self.kind}) unit {self.unit}, sample {self.sample}"


def find_kinks(problem: Problem) -> list[Kink]:
    """Every exact kink of the float64 forward pass, in layer/sample/unit order."""
    found: list[Kink] = []
    h = problem.x
    for index, layer in enumerate(problem.network.layers):
        h, cache = layer.numpy_forward(h, problem.network.layer_params(problem.params, index))
        inputs = layer.kink_inputs(cache)
        if inputs is None:
            continue
        for sample, unit in np.argwhere(inputs == 0):
            found.append(Kink(index, layer.kind, int(sample), int(unit)))
    return found


def samples_with_kinks(kinks: list[Kink], batch: int) -> np.ndarray:
    """Boolean ``(N,)``: which samples have at least one kink."""
    mask = np.zeros(batch, dtype=bool)
    for kink in kinks:
        mask[kink.sample] = True
    return mask
