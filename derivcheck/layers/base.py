"""Base classes of the layer catalog.

A layer is defined three times, independently, and each definition is used by one engine:

- :meth:`Layer.sympy_forward` -- the forward map on explicit element symbols (the symbolic
  engine differentiates it; no derivative is ever written by hand there);
- :meth:`Layer.numpy_forward` / :meth:`Layer.numpy_backward` -- a hand-written forward and
  local backward rule (the numpy engine's reverse mode; finite differences perturb the
  forward);
- :meth:`Layer.torch_module` -- the real ``torch.nn`` module, into which the case's
  parameters are copied.

Shapes follow PyTorch: a batch of inputs is ``(N, in_features)``; ``Linear`` weights are
``(out_features, in_features)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.errors import CaseError
from derivcheck.layers.rules import LocalRule, ProductCell

Params = Mapping[str, np.ndarray]
"""Parameters of one layer by local name (``"weight"``, ``"bias"``)."""

SymbolArrays = Mapping[str, np.ndarray]
"""Element symbols of one layer's parameters: object arrays of SymPy symbols, same shapes."""

_REQUIRED = object()


@dataclass(frozen=True)
class Option:
    """One option a layer or loss accepts in a case file.

    `check` returns ``None`` when the value is fine, or a text saying what is allowed.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any = _REQUIRED
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def positive_int(value: Any) -> str | None:
    return None if value >= 1 else "an integer >= 1"


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "integer", float: "number", bool: "boolean", str: "string"}.get(k, k.__name__) for k in kinds)


class Configurable(ABC):
    """Something built from a case-file table validated against :attr:`OPTIONS`."""

    kind: ClassVar[str]
    OPTIONS: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, file: str | None, key: str, type_key: str) -> "Configurable":
        """Validate `spec` (the table minus nothing) and build the object.

        `type_key` is the key naming the kind (``"layer"`` or ``"loss"``) and is skipped.
        """
        known = {opt.name: opt for opt in cls.OPTIONS}
        values: dict[str, Any] = {}
        for name, value in spec.items():
            if name == type_key:
                continue
            opt = known.get(name)
            if opt is None:
                allowed = ", ".join([type_key] + list(known)) if known else f"{type_key} (no options)"
                raise CaseError(f"unknown option {name!r} for {cls.kind}", file=file, key=key, value=value, allowed=allowed)
            kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise CaseError(f"option {name!r} of {cls.kind} has the wrong type", file=file, key=key, value=value, allowed=_type_name(opt.kind))
            if opt.check is not None:
                problem = opt.check(value)
                if problem:
                    raise CaseError(f"option {name!r} of {cls.kind} is out of range", file=file, key=key, value=value, allowed=problem)
            values[name] = value
        for opt in cls.OPTIONS:
            if opt.name not in values:
                if opt.required:
                    raise CaseError(f"{cls.kind} needs option {opt.name!r} ({opt.help or _type_name(opt.kind)})", file=file, key=key)
                values[opt.name] = opt.default
        try:
            return cls(**values)
        except ValueError as exc:  # options that are fine alone but not together
            raise CaseError(f"{cls.kind}: {exc}", file=file, key=key) from None

    def describe(self) -> str:
        """A short text such as ``linear(in=4, out=8)``."""
        shown = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.kind}({shown})" if shown else self.kind


class Layer(Configurable):
    """One layer of a feed-forward network acting on a batch ``(N, features)``.

    Subclasses define the three independent implementations described in the module
    docstring. Every engine passes each sample *flattened*: a layer whose input has a
    shape (``(C, H, W)`` images, ``(T, F)`` sequences) learns it from :meth:`bind`, which
    :class:`~derivcheck.problem.Network` calls with the shape the previous layer produces,
    and reshapes internally (row-major, like ``torch.reshape``).

    `ELEMENTWISE` layers act entry by entry and keep any input shape; the others need a
    flat ``(features,)`` input unless they override :meth:`output_shape`. `per_sample` is
    false for layers that couple the samples of a batch (batch normalisation in training
    mode).
    """

    ELEMENTWISE: ClassVar[bool] = False
    per_sample: bool = True
    in_shape: tuple[int, ...] = ()

    def bind(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Fix the per-sample input shape; returns the output shape (raises ValueError)."""
        out = self.output_shape(tuple(int(d) for d in in_shape))
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in out)
        return self.out_shape

    @property
    def in_size(self) -> int:
        return int(np.prod(self.in_shape))

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for `in_shape`; raises :class:`ValueError` with a
        message when the input does not fit."""
        if self.ELEMENTWISE:
            return in_shape
        if len(in_shape) != 1:
            raise ValueError(f'{self.kind} expects flat input features but receives shape {in_shape}; add {{ layer = "flatten" }} before it')
        return (self.output_size(in_shape[0]),)

    def output_size(self, in_size: int) -> int:
        """Number of output features for `in_size` flat input features.

        Raises :class:`ValueError` (with a message) when the input size does not fit.
        """
        return in_size

    def local_rule(self) -> "LocalRule | None":
        """The layer as repeated applications of small cells (convolutions, recurrences,
        attention), so the symbolic engine derives one cell and applies it everywhere;
        ``None`` means SymPy differentiates :meth:`sympy_forward` whole. Default: one
        cell per entry for parameter-free elementwise layers, else ``None``. Called
        after :meth:`bind`."""
        if self.ELEMENTWISE and not self.param_shapes() and not self.n_sample_constants:
            return elementwise_rule(self)
        return None

    def product_cell(self) -> "ProductCell | None":
        """A dense layer as one derived product term (``nn.Linear``); ``None`` for the rest."""
        return None

    n_sample_constants: int = 0
    """How many per-sample constants :meth:`sample_constants` gives (a dropout mask, an
    embedding's one-hot rows); :meth:`sympy_forward` finds their symbols under the key
    ``"@constants"`` of its parameter mapping."""

    def sample_constants(self, x: np.ndarray) -> np.ndarray | None:
        """Per-sample constants ``(N, C)`` for the layer input ``x`` ``(N, in)``: values
        the forward map uses but that are not differentiated. Default: none."""
        return None

    def batch_rule(self, batch: int) -> "LocalRule":
        """For layers with ``per_sample = False``: the local rule over the whole batch
        (value ``n * in_size + i`` is feature ``i`` of sample ``n``)."""
        raise NotImplementedError

    input_is_differentiable: ClassVar[bool] = True
    """False for layers whose inputs are indices (an embedding): dL/dx does not exist."""

    def random_inputs(self, rng: np.random.Generator, n: int) -> np.ndarray | None:
        """Valid random inputs ``(N, in)`` when the layer constrains them (indices);
        ``None`` lets the case draw standard normal values."""
        return None

    def torch_input(self, x: Any) -> Any:
        """Convert the tensor the torch module receives (indices to ``long``)."""
        return x

    def torch_output(self, output: Any) -> Any:
        """Pick the tensor from what the torch module returns (an LSTM returns a tuple)."""
        return output

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's parameters by local name (PyTorch layout)."""
        return {}

    def param_count(self) -> int:
        """How many numbers the parameters hold (from the shapes; nothing is allocated)."""
        return sum(int(np.prod(shape, dtype=np.float64)) for shape in self.param_shapes().values())

    def work_per_sample(self) -> float:
        """Rough multiply-adds of one sample's forward pass (for :mod:`derivcheck.budget`):
        every parameter used once plus every input and output touched. Layers that reuse
        their parameters (over positions, time steps, tokens) override it."""
        return float(self.param_count() + int(np.prod(self.in_shape or (1,), dtype=np.float64)) + int(np.prod(getattr(self, "out_shape", ()) or (1,), dtype=np.float64)))

    def held_values_per_sample(self) -> float:
        """Numbers one sample's forward pass holds in this layer besides its output (for
        :mod:`derivcheck.budget`): windows, attention matrices, one-hot codes."""
        return 0.0

    def python_steps(self) -> int:
        """Python-level applications in one forward pass (a recurrence: one per time step)."""
        return 1

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Seeded float64 initial parameters (PyTorch's default ranges)."""
        return {}

    @abstractmethod
    def sympy_forward(self, inputs: list[sp.Expr], params: SymbolArrays) -> list[sp.Expr]:
        """Outputs of one sample as SymPy expressions of the input element symbols."""

    @abstractmethod
    def numpy_forward(self, x: np.ndarray, params: Params) -> tuple[np.ndarray, Any]:
        """Forward pass on a batch ``x`` of shape ``(N, in)``; returns ``(y, cache)``."""

    @abstractmethod
    def numpy_backward(self, grad_y: np.ndarray, cache: Any, params: Params) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Hand-written local backward rule.

        **Arguments:** `grad_y` is dL/dy of shape ``(N, out)``; `cache` is what
        :meth:`numpy_forward` returned.

        **Returns:** ``(dL/dx of shape (N, in), {param name: dL/dparam})``.
        """

    @abstractmethod
    def torch_module(self) -> Any:
        """The matching ``torch.nn`` module (parameters named like :meth:`param_shapes`)."""

    def numpy_jet(self, h: np.ndarray, jac: np.ndarray, hess: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hand-written forward-mode propagation of a second-order jet: values ``h``
        ``(P, in)``, input Jacobian ``jac`` ``(P, in, d)`` and Hessian ``hess``
        ``(P, in, d, d)`` to the layer's outputs. Layers without one raise
        ``NotImplementedError`` (the numpy engine then skips field derivatives)."""
        raise NotImplementedError

    def kink_inputs(self, cache: Any) -> np.ndarray | None:
        """Values whose zeros are non-differentiable points (e.g. ReLU pre-activations,
        the gap between the two largest entries of a max-pool window), shape
        ``(N, units)``, or ``None`` for a smooth layer."""
        return None

    def kink_state(self, cache: Any) -> np.ndarray | None:
        """The discrete branch each unit is on, ``(N, units)``: a finite-difference step
        that changes it crossed a kink. Default: the sign of :meth:`kink_inputs`."""
        inputs = self.kink_inputs(cache)
        return None if inputs is None else inputs > 0


def elementwise_rule(layer: Layer) -> "LocalRule":
    """A parameter-free layer whose output entry i depends on input entry i only:
    :meth:`Layer.sympy_forward` of one symbol is the cell, applied to every entry."""
    from derivcheck.layers.rules import RuleBuilder

    builder = RuleBuilder(layer.in_size)
    cell = builder.cell(lambda ins, _p: layer.sympy_forward(ins, {}), 1, 0, ("elementwise", type(layer).__name__, repr(sorted(layer.options.items()))))
    out = builder.stage(cell, np.arange(layer.in_size)[:, None], np.zeros((layer.in_size, 0)), 1)
    return builder.build(out[:, 0])


def elementwise_jet(value: np.ndarray, first: np.ndarray, second: np.ndarray, jac: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jet through an elementwise function with value, first and second derivative given
    at the inputs: ``J' = s' J`` and ``H' = s'' J J^T + s' H`` per unit."""
    new_jac = first[..., None] * jac
    new_hess = second[..., None, None] * jac[..., :, None] * jac[..., None, :] + first[..., None, None] * hess
    return value, new_jac, new_hess


class Loss(Configurable):
    """A loss ``L = mean over samples of l_n`` (PyTorch's ``reduction="mean"``).

    Targets are passed to the engines as *target columns* ``(N, T)`` of floats (one-hot
    rows for class indices), so the symbolic engine can treat them as element symbols.
    """

    def check_output_size(self, size: int) -> str | None:
        """``None`` if a network with `size` outputs fits this loss, else what is needed."""
        return None

    @abstractmethod
    def encode_targets(self, raw: np.ndarray, out_size: int) -> np.ndarray:
        """Turn raw targets into target columns ``(N, T)``; raise ``ValueError`` with a message."""

    @abstractmethod
    def random_targets(self, rng: np.random.Generator, n: int, out_size: int) -> np.ndarray:
        """Seeded valid target columns for `n` samples."""

    @abstractmethod
    def sympy_per_sample(self, outputs: list[sp.Expr], targets: list[sp.Expr]) -> sp.Expr:
        """``l_n`` of one sample from its network outputs and target columns."""

    @abstractmethod
    def numpy_forward(self, y: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, Any]:
        """Per-sample losses ``(N,)`` and a cache."""

    @abstractmethod
    def numpy_backward(self, cache: Any) -> np.ndarray:
        """Hand-written ``d l_n / d y`` of shape ``(N, out)`` (per sample, not divided by N)."""

    @abstractmethod
    def torch_loss(self, y: Any, targets: Any) -> Any:
        """The scalar loss from the real ``torch.nn`` loss module; `targets` are target columns."""
