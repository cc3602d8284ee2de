"""Named derivatives a case asks for, and how their entries are labelled.

Quantity names (case-file ``quantities = [...]``):

- ``"L"``: the loss value (a forward check: the engines must agree on it too);
- ``"dL/dparams"``: expands to ``"dL/d<param>"`` for every parameter (``"dL/d0.weight"``);
- ``"dL/d<param>"``: one parameter's gradient, same shape as the parameter;
- ``"dL/dx"``: gradient of the loss w.r.t. the inputs, shape ``(N, in)``;
- ``"dy/dx"``: per-sample Jacobian of the network output w.r.t. its input,
  shape ``(N, out, in)``, entry ``[n, i, j] = d y_{n,i} / d x_{n,j}``;
- ``"clip_grad"``: all parameter gradients concatenated after
  ``torch.nn.utils.clip_grad_norm_(max_norm)`` (scaled by ``min(1, max_norm / (||g|| +
  1e-6))``); the torch engine runs the real function;
- ``"sgd_step"``: one SGD step ``-lr * dL/dparams`` (all parameters concatenated in
  ``state_dict`` order); the torch engine takes it from a real ``torch.optim.SGD`` step.

Above :data:`FD_FULL_PARAMETERS` parameters, ``"dL/dparams"`` also adds
``"dL/dparams·v"``: the gradient along :data:`PARAM_DIRECTIONS` fixed random unit
directions ``v`` (all parameters jointly). Finite differences take these directional
derivatives (six passes each) instead of differencing every parameter (six passes *per
parameter*); the exact engines' full gradients, projected, must agree with them, and with
each other entry by entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from derivcheck.problem import Problem

LOSS_VALUE = "L"
ALL_PARAMS = "dL/dparams"
INPUT_GRAD = "dL/dx"
JACOBIAN = "dy/dx"
SGD_STEP = "sgd_step"
CLIP_GRAD = "clip_grad"
PARAM_DIRECTIONS_NAME = "dL/dparams·v"

FD_FULL_PARAMETERS = 4096
"""Networks with more parameters get directional finite differences (see the module docstring)."""

PARAM_DIRECTIONS = 8
"""How many random directions ``v`` (seeded, unit norm) ``dL/dparams·v`` takes."""


def param_directions(total: int, count: int = PARAM_DIRECTIONS) -> np.ndarray:
    """``(count, total)`` fixed random unit directions over all parameters (state_dict order)."""
    rng = np.random.default_rng(20261202)
    v = rng.standard_normal((count, total))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


DEFAULT_QUANTITIES = (LOSS_VALUE, ALL_PARAMS, INPUT_GRAD, JACOBIAN)


@dataclass(frozen=True)
class Quantity:
    """One named quantity.

    `kind` is one of ``"loss"``, ``"param_grad"``, ``"input_grad"``, ``"jacobian"``,
    ``"sgd_step"``; `param` is the parameter name for ``"param_grad"``. `per_sample` says
    that the leading axis indexes samples (entries of one sample depend on that sample
    only). `group` names the set of quantities whose common magnitude sets the absolute
    tolerance floor (all parameter gradients form one group).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    param: str | None = None
    per_sample: bool = False
    group: str = ""

    def index_label(self, index: tuple[int, ...]) -> str:
        """A readable name for one entry, e.g. ``0.weight[3, 1]`` or ``sample 4: dy[1]/dx[0]``."""
        if self.kind == "loss":
            return "L"
        if self.kind == "param_directions":
            return f"direction v_{index[0]}"
        if self.kind == "param_grad":
            return f"{self.param}[{', '.join(map(str, index))}]"
        if self.kind == "input_grad":
            return f"x[{index[0]}, {index[1]}] (sample {index[0]})"
        if self.kind == "jacobian":
            return f"sample {index[0]}: dy[{index[1]}]/dx[{index[2]}]"
        return f"{self.name}[{', '.join(map(str, index))}]"

    def sgd_label(self, flat_index: int, problem: Problem) -> str:
        """Name the parameter entry behind a flat index of the concatenated parameters."""
        offset = 0
        for ref in problem.network.params():
            size = int(np.prod(ref.shape))
            if flat_index < offset + size:
                local = np.unravel_index(flat_index - offset, ref.shape)
                return f"{ref.qualified}[{', '.join(str(int(i)) for i in local)}]"
            offset += size
        return f"[{flat_index}]"


def expand_quantities(names: Sequence[str], problem: Problem) -> list[Quantity]:
    """Turn requested names into :class:`Quantity` objects, in a stable order.

    Raises :class:`ValueError` with what is allowed for an unknown name, or for a loss
    quantity on a problem without a loss.
    """
    refs = {ref.qualified: ref for ref in problem.network.params()}
    n, n_in, n_out = problem.batch, problem.network.in_size, problem.network.out_size
    total = sum(int(np.prod(ref.shape)) for ref in refs.values())
    result: list[Quantity] = []
    seen: set[str] = set()

    def add(q: Quantity) -> None:
        if q.name not in seen:
            seen.add(q.name)
            result.append(q)

    for name in names:
        needs_loss = name != JACOBIAN
        if needs_loss and problem.loss is None:
            raise ValueError(f"quantity {name!r} needs a loss, and the case defines none")
        if name == LOSS_VALUE:
            add(Quantity(name, "loss", ()))
        elif name == ALL_PARAMS:
            for ref in refs.values():
                add(Quantity(f"dL/d{ref.qualified}", "param_grad", ref.shape, param=ref.qualified, group=ALL_PARAMS))
            if total > FD_FULL_PARAMETERS:
                add(Quantity(PARAM_DIRECTIONS_NAME, "param_directions", (PARAM_DIRECTIONS,)))
        elif name.startswith("dL/d") and name[4:] in refs:
            ref = refs[name[4:]]
            add(Quantity(name, "param_grad", ref.shape, param=ref.qualified, group=ALL_PARAMS))
        elif name in (INPUT_GRAD, JACOBIAN) and not problem.network.layers[0].input_is_differentiable:
            first = problem.network.layers[0].kind
            raise ValueError(f"quantity {name!r} does not exist: the inputs of {first} are indices, not differentiable values")
        elif name == INPUT_GRAD:
            coupled = not all(layer.per_sample for layer in problem.network.layers)
            add(Quantity(name, "input_grad", (n, n_in), per_sample=not coupled))
        elif name == JACOBIAN:
            coupling = [layer.kind for layer in problem.network.layers if not layer.per_sample]
            if coupling:
                raise ValueError(f"quantity 'dy/dx' does not exist per sample: {coupling[0]} couples the samples of the batch (use dL/dx)")
            add(Quantity(name, "jacobian", (n, n_out, n_in), per_sample=True))
        elif name == SGD_STEP:
            if problem.sgd_lr is None:
                raise ValueError("quantity 'sgd_step' needs a learning rate: add sgd = { lr = 0.1 } to the case")
            add(Quantity(name, "sgd_step", (total,)))
        elif name == CLIP_GRAD:
            if problem.clip_max_norm is None:
                raise ValueError("quantity 'clip_grad' needs a norm: add clip = { max_norm = 1.0 } to the case")
            add(Quantity(name, "clip_grad", (total,)))
        else:
            allowed = [LOSS_VALUE, ALL_PARAMS, INPUT_GRAD, JACOBIAN, SGD_STEP, CLIP_GRAD] + [f"dL/d{p}" for p in refs]
            raise ValueError(f"unknown quantity {name!r}; allowed: {', '.join(allowed)}")
    return result
