"""The symbolic engine: SymPy-derived reference derivatives of networks
(:mod:`derivcheck.engines.symbolic.layers`) and of PDE fields
(:mod:`derivcheck.engines.symbolic.fields`), chosen by the kind of problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from derivcheck.fields import FieldProblem
from derivcheck.problem import Problem
from derivcheck.quantities import Quantity
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.engines.base import Engine
from derivcheck.engines.symbolic.fields import compute_fields
from derivcheck.engines.symbolic.layers import compile_layer, compile_loss, size_problem
from derivcheck.engines.symbolic.rules import BatchCoupledRule


class SymbolicEngine(Engine):
    """Reference derivatives derived by SymPy (see the module docstring). Networks beyond
    the limits of :func:`size_problem` are skipped with the reason."""

    name = "symbolic"

    def compute(self, problem: Problem, quantities: Sequence[Quantity]) -> EngineResult:
        if isinstance(problem, FieldProblem):
            return compute_fields(problem, quantities)
        network = problem.network
        n = problem.batch
        too_large = size_problem(network, n)
        if too_large:
            return {q.name: Skipped(too_large) for q in quantities}
        compiled = [compile_layer(layer, size) if layer.per_sample else BatchCoupledRule(layer.batch_rule(n), layer.param_shapes(), n) for layer, size in zip(network.layers, network.sizes)]
        flat_params = [network.layer_param_array(problem.params, index) for index in range(len(network.layers))]

        kinds = {q.kind for q in quantities}
        # dy/dx alone needs the inputs of every layer, not the network output
        needs_output = bool(kinds & {"loss", "param_grad", "input_grad"})
        activations = [problem.x.T.copy()]
        constants: list[np.ndarray | None] = []
        for index, (layer, params) in enumerate(zip(compiled, flat_params)):
            consts = network.layers[index].sample_constants(activations[-1].T)
            constants.append(None if consts is None else consts.T)
            if needs_output or index < len(compiled) - 1:
                activations.append(layer.forward(activations[-1], params, constants[-1]))

        result: EngineResult = {}
        if kinds & {"loss", "param_grad", "input_grad"} and problem.loss is not None:
            assert problem.targets is not None
            loss = compile_loss(problem.loss, network.out_size, problem.targets.shape[1])
            per_sample, grad = loss.value_and_grad(activations[-1], problem.targets.T)
            cotangent = grad / n
            param_grads: dict[str, np.ndarray] = {}
            for index in range(len(compiled) - 1, -1, -1):
                layer = compiled[index]
                if hasattr(layer, "vjp_sum"):  # matrix products: no per-sample parameter cotangents
                    cotangent, summed = layer.vjp_sum(activations[index], flat_params[index], cotangent, constants[index])
                else:
                    cotangent, per_sample_params = layer.vjp(activations[index], flat_params[index], cotangent, constants[index])
                    summed = per_sample_params.sum(axis=1)
                offset = 0
                for local, shape in layer.shapes.items():
                    size = int(np.prod(shape))
                    param_grads[f"{index}.{local}"] = summed[offset : offset + size].reshape(shape)
                    offset += size
            for q in quantities:
                if q.kind == "loss":
                    result[q.name] = EngineValue(np.asarray(per_sample.mean()))
                elif q.kind == "param_grad":
                    assert q.param is not None
                    result[q.name] = EngineValue(param_grads[q.param])
                elif q.kind == "input_grad":
                    result[q.name] = EngineValue(cotangent.T.copy())
        for q in quantities:
            if q.kind == "jacobian":
                result[q.name] = EngineValue(_chain_jacobians(compiled, activations, flat_params, constants, network.out_size < network.in_size))
            elif q.kind in ("sgd_step", "clip_grad", "param_directions"):
                result[q.name] = Skipped(f"{q.name} is derived from this engine's gradients by the runner")
        return result


def _chain_jacobians(compiled: list[Any], activations: list[np.ndarray], params: list[np.ndarray], constants: list[np.ndarray | None], reverse: bool) -> np.ndarray:
    """``dy/dx`` ``(N, out, in)`` as the product of the layers' Jacobians, taken from the
    input side (forward mode) or, with `reverse` (fewer outputs than inputs), from the
    output side: the same product, associated the cheaper way. Layers with a matrix-product
    rule apply it without forming their per-sample Jacobian."""
    product: np.ndarray | None = None
    steps = list(zip(compiled, activations, params, constants))
    for layer, a, p, consts in reversed(steps) if reverse else steps:
        if product is not None and reverse and hasattr(layer, "left_apply_jacobian"):
            product = layer.left_apply_jacobian(a, p, product)
        elif product is not None and not reverse and hasattr(layer, "apply_jacobian"):
            product = layer.apply_jacobian(a, p, product)
        else:
            jacobian = layer.jacobian(a, p, consts)
            if product is None:
                product = np.array(jacobian)
            else:
                product = np.matmul(product, jacobian) if reverse else np.matmul(jacobian, product)
    assert product is not None
    return product
