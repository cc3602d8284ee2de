"""Recurrent layers unrolled over time: ``RNN`` (tanh), ``LSTM`` and ``GRU``.

Samples are sequences ``(T, input_size)`` (PyTorch's ``batch_first=True``). Weights use
PyTorch's names and layout, gates stacked in PyTorch's order -- LSTM ``i, f, g, o``, GRU
``r, z, n`` -- so ``weight_ih_l0`` is ``(G*H, F)``, ``weight_hh_l0`` ``(G*H, H)``, biases
``(G*H,)``. The initial state ``h0`` (and ``c0``) is a learned parameter ``(H,)`` shared
by the batch (option ``initial_state = "learned"``, the default) so backpropagation
through time (BPTT) reaches it; ``"zeros"`` fixes it at 0 like PyTorch's default.
Option ``output``: ``"last"`` gives ``h_T`` ``(H,)``, ``"sequence"`` every ``h_t``
``(T, H)``.

- symbolic: a :class:`~derivcheck.layers.rules.LocalRule` whose cell is *one hidden unit
  at one time step* (its gates from ``x_t``, ``h_{t-1}`` and, for an LSTM, ``c_{t-1,j}``),
  derived once by SymPy and applied to H units x T steps;
- numpy: a hand-written BPTT (forward caches every gate, backward walks t = T..1);
- torch: the real ``nn.RNN/LSTM/GRU`` (a subclass adding the ``h0``/``c0`` parameters
  and calling the original ``forward``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.layers.base import Layer, Option, Params
from derivcheck.layers.rules import LocalRule, RuleBuilder, param_offsets


def _choice(*allowed: str):
    def check(value: Any) -> str | None:
        return None if value in allowed else " or ".join(repr(a) for a in allowed)

    return check


def _sigmoid(z: sp.Expr) -> sp.Expr:
    return 1 / (1 + sp.exp(-z))


def _np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class _Recurrent(Layer):
    """Shared shape handling, parameters, local rule and torch wrapper."""

    GATES = 1
    HAS_CELL_STATE = False
    TORCH_CLASS = ""
    OPTIONS = (
        Option("input_size", int, check=lambda v: None if v >= 1 else "an integer >= 1"),
        Option("hidden_size", int, check=lambda v: None if v >= 1 else "an integer >= 1"),
        Option("output", str, default="last", check=_choice("last", "sequence")),
        Option("initial_state", str, default="learned", check=_choice("learned", "zeros")),
        Option("bias", bool, default=True),
    )

    @property
    def hidden(self) -> int:
        return int(self.options["hidden_size"])

    @property
    def features(self) -> int:
        return int(self.options["input_size"])

    @property
    def steps(self) -> int:
        return int(self.in_shape[0])

    def work_per_sample(self) -> float:
        return float(self.param_count()) * self.steps + super().work_per_sample()

    def python_steps(self) -> int:
        return self.steps

    def output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) != 2 or in_shape[1] != self.features:
            raise ValueError(f"{self.kind} expects sequences of shape (T, {self.features}) (set input_shape = [T, {self.features}]), got {in_shape}")
        return (self.hidden,) if self.options["output"] == "last" else (in_shape[0], self.hidden)

    def _state_names(self) -> list[str]:
        if self.options["initial_state"] != "learned":
            return []
        return ["h0", "c0"] if self.HAS_CELL_STATE else ["h0"]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        g, h, f = self.GATES, self.hidden, self.features
        shapes: dict[str, tuple[int, ...]] = {"weight_ih_l0": (g * h, f), "weight_hh_l0": (g * h, h)}
        if self.options["bias"]:
            shapes.update({"bias_ih_l0": (g * h,), "bias_hh_l0": (g * h,)})
        for name in self._state_names():
            shapes[name] = (h,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        bound = 1.0 / np.sqrt(self.hidden)
        params = {name: rng.uniform(-bound, bound, size=shape) for name, shape in self.param_shapes().items()}
        for name in self._state_names():
            params[name] = rng.uniform(-0.5, 0.5, size=(self.hidden,))
        return params

    # -- symbolic ------------------------------------------------------------------------
    def _unit(self, x: list[sp.Expr], h: list[sp.Expr], extra: list[sp.Expr], w: list[sp.Expr]) -> list[sp.Expr]:
        """One unit's new state from ``x_t`` (F), ``h_{t-1}`` (H), `extra` (its own
        ``c`` or ``h`` entry) and its parameter row `w` (see :meth:`_unit_params`)."""
        raise NotImplementedError

    def _gate_pre(self, gate: int, x: list[sp.Expr], h: list[sp.Expr], w: list[sp.Expr]) -> tuple[sp.Expr, sp.Expr]:
        """``(W_i x + b_i, W_h h + b_h)`` of one gate from the unit's parameter row."""
        f, hsize = self.features, self.hidden
        stride = f + hsize + 2
        row = w[gate * stride : (gate + 1) * stride]
        wx = sp.Add(*[a * b for a, b in zip(row[:f], x)]) + row[f + hsize]
        wh = sp.Add(*[a * b for a, b in zip(row[f : f + hsize], h)]) + row[f + hsize + 1]
        return wx, wh

    def _unit_params(self, unit: int, offsets: dict[str, np.ndarray]) -> list[int]:
        """Flat parameter indices of unit `unit`: per gate its ``weight_ih`` row, its
        ``weight_hh`` row, ``bias_ih``, ``bias_hh`` (-1 = no bias)."""
        row: list[int] = []
        for gate in range(self.GATES):
            r = gate * self.hidden + unit
            row += list(offsets["weight_ih_l0"][r]) + list(offsets["weight_hh_l0"][r])
            row += [int(offsets["bias_ih_l0"][r]), int(offsets["bias_hh_l0"][r])] if "bias_ih_l0" in offsets else [-1, -1]
        return row

    def sympy_forward(self, inputs, params):
        """Whole-sequence form (for display); the engine uses :meth:`local_rule`."""
        f, hsize = self.features, self.hidden
        states = [params[n] if n in params else np.array([sp.Integer(0)] * hsize, dtype=object) for n in ("h0", "c0")]
        h, c = list(states[0]), list(states[1])
        flat = np.array(
            list(params["weight_ih_l0"].ravel()) + list(params["weight_hh_l0"].ravel()) + (list(params["bias_ih_l0"]) + list(params["bias_hh_l0"]) if "bias_ih_l0" in params else []), dtype=object
        )
        offsets = param_offsets({k: v.shape for k, v in params.items() if k.startswith(("weight", "bias"))})
        sequence = []
        for t in range(self.steps):
            x = list(inputs[t * f : (t + 1) * f])
            new = [self._unit(x, h, [c[j] if self.HAS_CELL_STATE else h[j]], [flat[i] if i >= 0 else sp.Integer(0) for i in self._unit_params(j, offsets)]) for j in range(hsize)]
            h = [n[0] for n in new]
            if self.HAS_CELL_STATE:
                c = [n[1] for n in new]
            sequence += h
        return h if self.options["output"] == "last" else sequence

    def local_rule(self) -> LocalRule:
        f, hsize = self.features, self.hidden
        offsets = param_offsets(self.param_shapes())
        builder = RuleBuilder(self.in_size)
        n_unit_params = self.GATES * (f + hsize + 2)
        n_out = 2 if self.HAS_CELL_STATE else 1

        def fn(ins: list[sp.Expr], w: list[sp.Expr]) -> list[sp.Expr]:
            return self._unit(ins[:f], ins[f : f + hsize], ins[f + hsize :], w)

        cell = builder.cell(fn, f + hsize + 1, n_unit_params, (self.kind, f, hsize))
        copy = builder.cell(lambda _ins, w: [w[0]], 0, 1, ("copy-param",))
        zeros = np.full(hsize, -1, dtype=np.int64)
        states = {name: builder.stage(copy, np.zeros((hsize, 0)), offsets[name][:, None], 1)[:, 0] for name in self._state_names()}
        h = states.get("h0", zeros)
        c = states.get("c0", zeros)
        unit_params = np.array([self._unit_params(j, offsets) for j in range(hsize)], dtype=np.int64)
        sequence = []
        for t in range(self.steps):
            x = np.arange(t * f, (t + 1) * f, dtype=np.int64)
            own = c if self.HAS_CELL_STATE else h
            inputs = np.concatenate([np.tile(x, (hsize, 1)), np.tile(h, (hsize, 1)), own[:, None]], axis=1)
            out = builder.stage(cell, inputs, unit_params, n_out)
            h = out[:, 0]
            if self.HAS_CELL_STATE:
                c = out[:, 1]
            sequence.append(h)
        return builder.build(h if self.options["output"] == "last" else np.concatenate(sequence))

    # -- numpy ---------------------------------------------------------------------------
    def _initial(self, params: Params, n: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        h0 = params["h0"] if "h0" in params else np.zeros(self.hidden)
        c0 = params["c0"] if "c0" in params else np.zeros(self.hidden)
        return np.tile(h0.astype(dtype), (n, 1)), np.tile(c0.astype(dtype), (n, 1))

    def _pre(self, params: Params, x_t: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gi = x_t @ params["weight_ih_l0"].T
        gh = h @ params["weight_hh_l0"].T
        if "bias_ih_l0" in params:
            gi = gi + params["bias_ih_l0"]
            gh = gh + params["bias_hh_l0"]
        return gi, gh

    def _finish(self, grads: dict[str, np.ndarray], params: Params, dh: np.ndarray, dc: np.ndarray | None) -> dict[str, np.ndarray]:
        if "bias_ih_l0" not in params:
            grads.pop("bias_ih_l0")
            grads.pop("bias_hh_l0")
        if "h0" in params:
            grads["h0"] = dh.sum(axis=0)
        if "c0" in params and dc is not None:
            grads["c0"] = dc.sum(axis=0)
        return grads

    def _zero_grads(self, params: Params, dtype: Any) -> dict[str, np.ndarray]:
        g, h, f = self.GATES, self.hidden, self.features
        return {
            "weight_ih_l0": np.zeros((g * h, f), dtype=dtype), "weight_hh_l0": np.zeros((g * h, h), dtype=dtype),
            "bias_ih_l0": np.zeros(g * h, dtype=dtype), "bias_hh_l0": np.zeros(g * h, dtype=dtype),
        }  # fmt: skip

    @staticmethod
    def _step_back(grads: dict[str, np.ndarray], params: Params, d_input: np.ndarray, d_hidden: np.ndarray, x_t: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One BPTT step through ``W_ih x_t + b_ih`` (pre-activation gradient `d_input`)
        and ``W_hh h_{t-1} + b_hh`` (`d_hidden`): accumulates the weight and bias
        gradients, returns ``(dL/dx_t, dL/dh_{t-1} through W_hh)``."""
        grads["weight_ih_l0"] += d_input.T @ x_t
        grads["weight_hh_l0"] += d_hidden.T @ h_prev
        grads["bias_ih_l0"] += d_input.sum(axis=0)
        grads["bias_hh_l0"] += d_hidden.sum(axis=0)
        return d_input @ params["weight_ih_l0"], d_hidden @ params["weight_hh_l0"]

    def _output_grads(self, grad_y: np.ndarray) -> np.ndarray:
        """``dL/dh_t`` from outside the layer, ``(T, N, H)`` (zeros except at T for "last")."""
        n = grad_y.shape[0]
        direct = np.zeros((self.steps, n, self.hidden), dtype=grad_y.dtype)
        if self.options["output"] == "last":
            direct[-1] = grad_y
        else:
            direct[:] = grad_y.reshape(n, self.steps, self.hidden).transpose(1, 0, 2)
        return direct

    def _output(self, hs: list[np.ndarray]) -> np.ndarray:
        if self.options["output"] == "last":
            return hs[-1]
        return np.stack(hs, axis=1).reshape(hs[0].shape[0], -1)

    # -- torch ---------------------------------------------------------------------------
    def torch_module(self) -> Any:
        import torch

        cls = _torch_class(self.TORCH_CLASS)
        kwargs = {"nonlinearity": "tanh"} if self.TORCH_CLASS == "RNN" else {}
        return cls(self.features, self.hidden, self._state_names(), bias=bool(self.options["bias"]), batch_first=True, dtype=torch.float64, **kwargs)

    def torch_output(self, output: Any) -> Any:
        sequence, _state = output
        return sequence[:, -1] if self.options["output"] == "last" else sequence


@lru_cache(maxsize=None)
def _torch_class(name: str) -> Any:
    """``nn.<name>`` subclass with learned initial state parameters ``h0`` (``c0``)."""
    import torch

    base = getattr(torch.nn, name)

    class WithInitialState(base):  # type: ignore[misc, valid-type]
        def __init__(self, input_size: int, hidden_size: int, state_names: list[str], **kwargs: Any):
            super().__init__(input_size, hidden_size, **kwargs)
            self.state_names = list(state_names)
            for state in state_names:
                self.register_parameter(state, torch.nn.Parameter(torch.zeros(hidden_size, dtype=kwargs.get("dtype"))))

        def forward(self, x: Any) -> Any:
            n = x.shape[0]
            states = []
            for state in ("h0", "c0") if name == "LSTM" else ("h0",):
                if state in self.state_names:
                    states.append(getattr(self, state).reshape(1, 1, -1).expand(1, n, self.hidden_size).contiguous())
                else:
                    states.append(x.new_zeros(1, n, self.hidden_size))
            return super().forward(x, tuple(states) if name == "LSTM" else states[0])

    WithInitialState.__name__ = WithInitialState.__qualname__ = f"{name}WithInitialState"
    return WithInitialState


class RNN(_Recurrent):
    """``nn.RNN(nonlinearity="tanh")``: ``h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``."""

    kind = "rnn"
    GATES = 1
    TORCH_CLASS = "RNN"

    def _unit(self, x, h, extra, w):
        wx, wh = self._gate_pre(0, x, h, w)
        return [sp.tanh(wx + wh)]

    def numpy_forward(self, x, params):
        n = x.shape[0]
        xs = x.reshape(n, self.steps, self.features)
        h, _ = self._initial(params, n, x.dtype)
        hs = [h]
        for t in range(self.steps):
            gi, gh = self._pre(params, xs[:, t], h)
            h = np.tanh(gi + gh)
            hs.append(h)
        return self._output(hs[1:]), (xs, hs)

    def numpy_backward(self, grad_y, cache, params):
        xs, hs = cache
        direct = self._output_grads(grad_y)
        grads = self._zero_grads(params, grad_y.dtype)
        dx = np.zeros_like(xs, dtype=grad_y.dtype)
        dh = np.zeros_like(hs[0], dtype=grad_y.dtype)
        for t in range(self.steps - 1, -1, -1):
            dh = dh + direct[t]
            da = dh * (1 - hs[t + 1] ** 2)
            dx[:, t], dh = self._step_back(grads, params, da, da, xs[:, t], hs[t])
        return dx.reshape(xs.shape[0], -1), self._finish(grads, params, dh, None)


class LSTM(_Recurrent):
    """``nn.LSTM``: gates ``i, f, g, o`` (PyTorch's order); ``c_t = f c_{t-1} + i g``,
    ``h_t = o tanh(c_t)``."""

    kind = "lstm"
    GATES = 4
    HAS_CELL_STATE = True
    TORCH_CLASS = "LSTM"

    def _unit(self, x, h, extra, w):
        i, f, g, o = (sum(self._gate_pre(k, x, h, w)) for k in range(4))
        c = _sigmoid(f) * extra[0] + _sigmoid(i) * sp.tanh(g)
        return [_sigmoid(o) * sp.tanh(c), c]

    def numpy_forward(self, x, params):
        n = x.shape[0]
        xs = x.reshape(n, self.steps, self.features)
        h, c = self._initial(params, n, x.dtype)
        hsize = self.hidden
        hs, cs, gates = [h], [c], []
        for t in range(self.steps):
            gi, gh = self._pre(params, xs[:, t], h)
            z = gi + gh
            i = _np_sigmoid(z[:, :hsize])
            f = _np_sigmoid(z[:, hsize : 2 * hsize])
            g = np.tanh(z[:, 2 * hsize : 3 * hsize])
            o = _np_sigmoid(z[:, 3 * hsize :])
            c = f * c + i * g
            h = o * np.tanh(c)
            hs.append(h)
            cs.append(c)
            gates.append((i, f, g, o))
        return self._output(hs[1:]), (xs, hs, cs, gates)

    def numpy_backward(self, grad_y, cache, params):
        xs, hs, cs, gates = cache
        direct = self._output_grads(grad_y)
        grads = self._zero_grads(params, grad_y.dtype)
        dx = np.zeros_like(xs, dtype=grad_y.dtype)
        dh = np.zeros_like(hs[0], dtype=grad_y.dtype)
        dc = np.zeros_like(cs[0], dtype=grad_y.dtype)
        for t in range(self.steps - 1, -1, -1):
            i, f, g, o = gates[t]
            dh = dh + direct[t]
            tanh_c = np.tanh(cs[t + 1])
            do = dh * tanh_c
            dc = dc + dh * o * (1 - tanh_c**2)
            dz = np.concatenate([dc * g * i * (1 - i), dc * cs[t] * f * (1 - f), dc * i * (1 - g**2), do * o * (1 - o)], axis=1)
            dc = dc * f
            dx[:, t], dh = self._step_back(grads, params, dz, dz, xs[:, t], hs[t])
        return dx.reshape(xs.shape[0], -1), self._finish(grads, params, dh, dc)


class GRU(_Recurrent):
    """``nn.GRU``: gates ``r, z, n`` (PyTorch's order); ``n = tanh(W_in x + b_in + r (W_hn h
    + b_hn))``, ``h_t = (1 - z) n + z h_{t-1}``."""

    kind = "gru"
    GATES = 3
    TORCH_CLASS = "GRU"

    def _unit(self, x, h, extra, w):
        r = _sigmoid(sum(self._gate_pre(0, x, h, w)))
        z = _sigmoid(sum(self._gate_pre(1, x, h, w)))
        nx, nh = self._gate_pre(2, x, h, w)
        n = sp.tanh(nx + r * nh)
        return [(1 - z) * n + z * extra[0]]

    def numpy_forward(self, x, params):
        n_samples = x.shape[0]
        xs = x.reshape(n_samples, self.steps, self.features)
        h, _ = self._initial(params, n_samples, x.dtype)
        hsize = self.hidden
        hs, caches = [h], []
        for t in range(self.steps):
            gi, gh = self._pre(params, xs[:, t], h)
            r = _np_sigmoid(gi[:, :hsize] + gh[:, :hsize])
            z = _np_sigmoid(gi[:, hsize : 2 * hsize] + gh[:, hsize : 2 * hsize])
            hn = gh[:, 2 * hsize :]
            n = np.tanh(gi[:, 2 * hsize :] + r * hn)
            h = (1 - z) * n + z * h
            hs.append(h)
            caches.append((r, z, n, hn))
        return self._output(hs[1:]), (xs, hs, caches)

    def numpy_backward(self, grad_y, cache, params):
        xs, hs, caches = cache
        direct = self._output_grads(grad_y)
        grads = self._zero_grads(params, grad_y.dtype)
        dx = np.zeros_like(xs, dtype=grad_y.dtype)
        dh = np.zeros_like(hs[0], dtype=grad_y.dtype)
        for t in range(self.steps - 1, -1, -1):
            r, z, n, hn = caches[t]
            dh = dh + direct[t]
            dn = dh * (1 - z)
            dz = dh * (hs[t] - n)
            dan = dn * (1 - n**2)
            dr = dan * hn
            da_r = dr * r * (1 - r)
            da_z = dz * z * (1 - z)
            d_input = np.concatenate([da_r, da_z, dan], axis=1)
            d_hidden = np.concatenate([da_r, da_z, dan * r], axis=1)
            dx[:, t], through_w = self._step_back(grads, params, d_input, d_hidden, xs[:, t], hs[t])
            dh = dh * z + through_w
        return dx.reshape(xs.shape[0], -1), self._finish(grads, params, dh, None)
