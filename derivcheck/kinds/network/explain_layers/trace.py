"""One forward and backward pass of a network case, kept layer by layer, for explain.

The numpy forward (the layers' hand-written implementations, float64) gives each layer's
input and output; the torch forward of the real ``nn`` modules, with ``retain_grad()`` on
every intermediate tensor, gives the reference ``dL/dy`` and ``dL/dx`` of every layer and
the ``.grad`` of every parameter. Shapes are flat per sample, ``(N, features)``, as every
engine passes them; ``layer.in_shape`` / ``layer.out_shape`` give the natural shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LayerTrace:
    """Everything one layer's explanation needs (see the module docstring).

    - `index`, `layer`: position in the network and the bound layer;
    - `name_in`, `name_out`: the names the explanation uses (``"x"``, ``"h1"``, ...);
    - `x` ``(N, in)``, `y` ``(N, out)``, `cache`: the numpy forward's input, output and cache;
    - `params`: the layer's parameters by local name (``"weight"``), float64;
    - `torch_y` ``(N, out)``: the torch module's output;
    - `grad_y` ``(N, out)``, `grad_x` ``(N, in)``: torch's ``dL/dy`` and ``dL/dx`` of this
      layer (``retain_grad()``; zeros where the input is not differentiable, e.g. token ids);
    - `param_grads`: torch's ``.grad`` of the layer's parameters by local name;
    - `module`: the torch module (float64, the case's parameters; flat ``(N, in)`` inputs).
    """

    index: int
    layer: Any
    name_in: str
    name_out: str
    x: np.ndarray
    y: np.ndarray
    cache: Any
    params: dict[str, np.ndarray]
    torch_y: np.ndarray
    grad_y: np.ndarray
    grad_x: np.ndarray
    param_grads: dict[str, np.ndarray]
    module: Any

    def numpy_rule(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The layer's hand-written backward rule fed torch's ``dL/dy``: ``(dL/dx, {param:
        dL/dparam})`` -- the rule alone, isolated from every other layer."""
        return self.layer.numpy_backward(self.grad_y, self.cache, self.params)

    @property
    def title(self) -> str:
        return f"layer {self.index} ({self.layer.kind})"


@dataclass
class NetworkTrace:
    """The traces of every layer plus the loss: `loss` (torch, a float), `per_sample_loss`
    ``(N,)`` (numpy), `grad_out` ``(N, out)`` (torch's dL/d network output), `grad_input`
    ``(N, in)`` (torch's dL/dx of the network input) and the numpy loss cache."""

    layers: list[LayerTrace]
    loss: float
    per_sample_loss: np.ndarray
    loss_cache: Any
    grad_out: np.ndarray
    torch_param_grads: dict[str, np.ndarray]


def layer_names(count: int) -> list[str]:
    """``x, h1, h2, ..., h_count``: the input and each layer's output."""
    return ["x"] + [f"h{k}" for k in range(1, count + 1)]


def trace_network(problem: Any) -> NetworkTrace:
    """Run `problem` (a :class:`~derivcheck.problem.Problem` with a loss) through numpy and
    torch and keep every layer's values and gradients (see the module docstring)."""
    import torch

    network = problem.network
    assert problem.loss is not None and problem.targets is not None
    names = layer_names(len(network.layers))
    inputs, outputs, caches, local = [], [], [], []
    h = problem.x
    for index, layer in enumerate(network.layers):
        params = network.layer_params(problem.params, index)
        inputs.append(h)
        h, cache = layer.numpy_forward(h, params)
        outputs.append(h)
        caches.append(cache)
        local.append(params)
    per_sample, loss_cache = problem.loss.numpy_forward(h, problem.targets)

    model = network.torch_model(problem.params)
    t_x = torch.tensor(problem.x, dtype=torch.float64, requires_grad=True)
    t_inputs, t_outputs = [], []
    t_h = t_x
    for module in model:
        t_inputs.append(t_h)
        t_h = module(t_h)
        t_h.retain_grad()
        t_outputs.append(t_h)
    t_loss = problem.loss.torch_loss(t_h, torch.tensor(problem.targets, dtype=torch.float64))
    t_loss.backward()

    def grad_of(tensor: Any) -> np.ndarray:
        if tensor.grad is None:
            return np.zeros(tuple(tensor.shape))
        return tensor.grad.detach().numpy().copy()

    traces = []
    for index, (layer, module) in enumerate(zip(network.layers, model)):
        param_grads = {name: grad_of(p) for name, p in module.named_parameters()}
        traces.append(
            LayerTrace(
                index=index,
                layer=layer,
                name_in=names[index],
                name_out=names[index + 1],
                x=inputs[index],
                y=outputs[index],
                cache=caches[index],
                params=local[index],
                torch_y=t_outputs[index].detach().numpy().copy(),
                grad_y=grad_of(t_outputs[index]),
                grad_x=grad_of(t_inputs[index]),
                param_grads=param_grads,
                module=module,
            )
        )
    all_grads = {name: grad_of(p) for name, p in model.named_parameters()}
    return NetworkTrace(traces, float(t_loss.item()), per_sample, loss_cache, grad_of(t_outputs[-1]), all_grads)
