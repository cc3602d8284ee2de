"""The numbers every engine works from: a network, its parameters, inputs and targets.

A :class:`Problem` is engine-neutral: parameters are float64 numpy arrays keyed like
``nn.Sequential``'s ``state_dict`` (``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ...), the
inputs ``x`` are ``(N, in)`` and the targets are target columns ``(N, T)`` (see
:mod:`derivcheck.layers.losses`). `dtype` is the precision the *engines under test*
(numpy and torch) run in; the symbolic and finite-difference references always use float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivcheck.errors import InvalidArgument
from derivcheck.layers import Layer, Loss

DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class ParamRef:
    """One parameter tensor: its qualified name (``"2.weight"``), layer index and shape."""

    qualified: str
    layer: int
    local: str
    shape: tuple[int, ...]


@dataclass
class Network:
    """A sequence of layers with known per-sample input shape.

    `shapes[i]` is the per-sample shape entering layer i (``shapes[-1]`` is the output
    shape) and `sizes[i]` its flat size: every engine passes samples flattened, ``(N,
    sizes[i])``, and a layer that needs its shape (a convolution, a recurrence) learns it
    from :meth:`Layer.bind`.
    """

    layers: list[Layer]
    sizes: list[int]
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @classmethod
    def build(cls, layers: Sequence[Layer], in_size: int | None = None, in_shape: Sequence[int] | None = None) -> "Network":
        """Chain `layers`, checking that consecutive shapes fit.

        The input shape defaults to ``(in_size,)``, else to the first layer's ``in``
        option. Raises :class:`ValueError` naming the first layer (0-based) that does not fit.
        """
        if not layers:
            raise ValueError("a network needs at least one layer")
        if in_shape is None:
            if in_size is None:
                in_size = layers[0].options.get("in")
                if in_size is None:
                    raise ValueError("the input shape is unknown: start the network with a linear layer or give input_shape")
            in_shape = (int(in_size),)
        shapes = [tuple(int(d) for d in in_shape)]
        if any(d < 1 for d in shapes[0]):
            raise ValueError(f"input shape {shapes[0]} must have positive sizes")
        for index, layer in enumerate(layers):
            try:
                shapes.append(layer.bind(shapes[-1]))
            except ValueError as exc:
                raise ValueError(f"layer {index} ({layer.describe()}): {exc}") from None
        return cls(list(layers), [int(np.prod(s)) for s in shapes], shapes)

    @property
    def in_size(self) -> int:
        return self.sizes[0]

    @property
    def out_size(self) -> int:
        return self.sizes[-1]

    def params(self) -> Iterator[ParamRef]:
        """Every parameter in ``state_dict`` order."""
        for index, layer in enumerate(self.layers):
            for local, shape in layer.param_shapes().items():
                yield ParamRef(f"{index}.{local}", index, local, shape)

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Seeded float64 parameters; the same seed always gives the same numbers."""
        rng = np.random.default_rng(seed)
        params: dict[str, np.ndarray] = {}
        for index, layer in enumerate(self.layers):
            for local, value in layer.init_params(rng).items():
                params[f"{index}.{local}"] = np.asarray(value, dtype=np.float64)
        return params

    def layer_params(self, params: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
        """The parameters of layer `index` by local name."""
        prefix = f"{index}."
        return {name[len(prefix) :]: value for name, value in params.items() if name.startswith(prefix)}

    def layer_param_vector(self, params: dict[str, np.ndarray], index: int) -> list[float]:
        """Layer `index`'s parameters flattened in ``param_shapes`` order (the argument
        order of the symbolic engine's compiled functions)."""
        return self.layer_param_array(params, index).tolist()

    def layer_param_array(self, params: dict[str, np.ndarray], index: int) -> np.ndarray:
        """:meth:`layer_param_vector` as one float64 array (no Python float per entry: a
        256x256 layer's 65,536 weights)."""
        local = self.layer_params(params, index)
        parts = [np.asarray(local[name], dtype=np.float64).ravel() for name in self.layers[index].param_shapes()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def torch_model(self, params: dict[str, np.ndarray], dtype: Any = "float64", device: str = "cpu") -> Any:
        """The real ``nn.Sequential`` of the layers' torch modules with `params` loaded
        (names ``"0.weight"``, ...); `dtype` is ``"float64"``, ``"float32"`` or a torch dtype."""
        import torch

        if isinstance(dtype, str):
            dtype = torch.float64 if dtype == "float64" else torch.float32
        modules = []
        for layer in self.layers:
            module = layer.torch_module()
            _adapt_shapes(module, layer)
            modules.append(module)
        model = torch.nn.Sequential(*modules).to(device=device, dtype=dtype)
        state = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in params.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        named = dict(model.named_parameters())
        if unexpected or any(key in named for key in missing):
            raise InvalidArgument(f"parameters do not match the torch modules: missing {missing}, unexpected {unexpected}")
        return model

    def describe(self) -> str:
        return " -> ".join(layer.describe() for layer in self.layers)


def _adapt_shapes(module: Any, layer: Layer) -> None:
    """Let the real torch module see its natural input shape ``(N, *in_shape)`` and hand
    its output on flat ``(N, out)``, without renaming its parameters: a forward pre-hook
    reshapes the input, a forward hook picks the tensor (:meth:`Layer.torch_output`) and
    flattens it."""
    in_shape = layer.in_shape
    module.register_forward_pre_hook(lambda _m, args: (layer.torch_input(args[0].reshape(args[0].shape[0], *in_shape)),) + tuple(args[1:]))
    module.register_forward_hook(lambda _m, _args, out: _flatten(layer.torch_output(out)))


def _flatten(tensor: Any) -> Any:
    return tensor if tensor.dim() == 2 else tensor.reshape(tensor.shape[0], -1)


@dataclass
class Problem:
    """Everything an engine needs: see the module docstring for conventions."""

    network: Network
    params: dict[str, np.ndarray]
    x: np.ndarray
    loss: Loss | None = None
    targets: np.ndarray | None = None
    dtype: str = "float64"
    sgd_lr: float | None = None
    clip_max_norm: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidArgument(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self.x = np.asarray(self.x, dtype=np.float64)
        if self.x.ndim != 2 or self.x.shape[1] != self.network.in_size:
            raise InvalidArgument(f"inputs must have shape (N, {self.network.in_size}), got {self.x.shape}")
        if self.x.shape[0] < 1:
            raise InvalidArgument("inputs must contain at least one sample")
        expected = {ref.qualified: ref.shape for ref in self.network.params()}
        if set(expected) != set(self.params):
            raise InvalidArgument(f"parameters must be exactly {sorted(expected)}, got {sorted(self.params)}")
        for name, shape in expected.items():
            value = np.asarray(self.params[name], dtype=np.float64)
            if value.shape != shape:
                raise InvalidArgument(f"parameter {name!r} must have shape {shape}, got {value.shape}")
            self.params[name] = value
        if (self.loss is None) != (self.targets is None):
            raise InvalidArgument("a loss needs targets and targets need a loss")
        if self.targets is not None:
            self.targets = np.asarray(self.targets, dtype=np.float64)
            if self.targets.ndim != 2 or self.targets.shape[0] != self.x.shape[0]:
                raise InvalidArgument(f"targets must be target columns of shape (N={self.x.shape[0]}, T), got {self.targets.shape}")

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])

    @property
    def numpy_dtype(self) -> type:
        return np.float64 if self.dtype == "float64" else np.float32
