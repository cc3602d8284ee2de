"""Numpy engine: a from-scratch reverse mode built on the layers' hand-written backward rules.

This is the classic "backprop in numpy" of an MLP: a forward pass that caches what each
layer needs, then the local backward rules applied in reverse (``dL/dx = dL/dy W`` for a
linear layer, ``dL/dz = dL/da * (z > 0)`` for ReLU, ``p - y`` for softmax cross-entropy,
...). It runs in the problem's dtype (float64 or float32), so float32 user code is judged
with float32 tolerances.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derivcheck.fields import FieldProblem
from derivcheck.problem import Problem
from derivcheck.quantities import Quantity
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.engines.base import Engine


class NumpyBackprop(Engine):
    """Reverse mode over the layers' ``numpy_forward``/``numpy_backward``."""

    name = "numpy"

    def compute(self, problem: Problem, quantities: Sequence[Quantity]) -> EngineResult:
        if isinstance(problem, FieldProblem):
            from derivcheck.engines.numpy_backprop.fields import compute_fields

            return compute_fields(problem, quantities)
        dtype = problem.numpy_dtype
        network = problem.network
        params: list[dict[str, np.ndarray]] = [{k: v.astype(dtype) for k, v in network.layer_params(problem.params, i).items()} for i in range(len(network.layers))]
        x: np.ndarray = problem.x.astype(dtype)
        caches: list[Any] = []
        h = x
        for layer, p in zip(network.layers, params):
            h, cache = layer.numpy_forward(h, p)
            caches.append(cache)
        y = h

        def backward(grad_y: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            grads: dict[str, np.ndarray] = {}
            g = grad_y
            for index in range(len(network.layers) - 1, -1, -1):
                g, local = network.layers[index].numpy_backward(g, caches[index], params[index])
                for name, value in local.items():
                    grads[f"{index}.{name}"] = value
            return g, grads

        result: EngineResult = {}
        kinds = {q.kind for q in quantities}
        if kinds & {"loss", "param_grad", "input_grad"} and problem.loss is not None:
            assert problem.targets is not None
            targets: np.ndarray = problem.targets.astype(dtype)
            per_sample, loss_cache = problem.loss.numpy_forward(y, targets)
            grad_y = problem.loss.numpy_backward(loss_cache) / problem.batch
            grad_x, grads = backward(grad_y.astype(dtype))
            for q in quantities:
                if q.kind == "loss":
                    result[q.name] = self._value(per_sample.mean(), problem)
                elif q.kind == "param_grad":
                    assert q.param is not None
                    result[q.name] = self._value(grads[q.param], problem)
                elif q.kind == "input_grad":
                    result[q.name] = self._value(grad_x, problem)
        for q in quantities:
            if q.kind == "jacobian":
                n_out = network.out_size
                jac = np.empty((problem.batch, n_out, network.in_size))
                for i in range(n_out):
                    seed: np.ndarray = np.zeros((problem.batch, n_out), dtype=dtype)
                    seed[:, i] = 1
                    jac[:, i, :] = backward(seed)[0]
                result[q.name] = self._value(jac, problem)
            elif q.kind in ("sgd_step", "clip_grad", "param_directions"):
                result[q.name] = Skipped(f"{q.name} is derived from this engine's gradients by the runner")
        return result

    @staticmethod
    def _value(values: Any, problem: Problem) -> EngineValue:
        return EngineValue(np.asarray(values, dtype=np.float64), dtype=problem.dtype)
