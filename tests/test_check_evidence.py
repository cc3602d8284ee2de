"""OK means proven: each way a wrong backward used to get ``derivcheck OK`` -- evidence too
weak to see it -- now gets the verdict it deserves, and its correct twin still passes (in
float64, float32 and the half precisions where it applies).

1. a float64 measuring stick for low-precision code (closures, casts, modules in lambdas);
2. stencils that stay on one side of a kink or a domain edge;
3. evidence strength: a precision per quantity, ``inconclusive`` where nothing is proven;
4. nondeterminism beyond rounding is a failure, never a wider bound;
5. exact (widening) casts carry no rounding noise;
6. forward mode without a tangent is "not supported", unless asked for;
7. a check leaves what it checks as it found it.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derivcheck as dc
from derivcheck.check.noise import RoundingNoise
from programs import ScaleGrad


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_gelu(rel: float) -> type[torch.autograd.Function]:
    """GELU with a hand-written backward that is ``(1 + rel)`` too large."""

    class MyGELU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.nn.functional.gelu(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
            pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            return g * (cdf + x * pdf) * (1 + rel)

    return MyGELU


# -- 1. the float64 measuring stick ----------------------------------------------------------


def test_a_float32_closure_is_judged_against_float64():
    W = torch.randn(5, 4, generator=gen(0))  # closed over, float32, as a module's weight is
    x = torch.randn(3, 5, generator=gen(1))
    good = dc.check_torch(lambda x: make_gelu(0.0).apply(x @ W), x)
    assert good.ok and good.reference == "finite differences of your forward promoted to float64", str(good)
    assert good.quantities[0].precision < 1e-3
    bad = dc.check_torch(lambda x: make_gelu(1e-3).apply(x @ W), x)
    assert bad.verdict == "mismatch" and bad.quantities[0].odd_engine is None
    assert W.dtype == torch.float32  # the closure's tensor is not touched


def test_a_float32_lstm_inside_a_lambda_is_judged_sharply():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 3, batch_first=True)
    x = torch.randn(2, 5, 4, generator=gen(2))
    good = dc.check_torch(lambda x: lstm(x)[0], x)
    assert good.ok and good.quantities[0].precision < 1e-3, str(good)
    bad = dc.check_torch(lambda x: ScaleGrad.apply(lstm(x)[0], 1e-3), x)
    assert not bad.ok


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_closures_are_judged_against_float64(dtype):
    W = torch.randn(5, 4, generator=gen(3)).to(dtype)
    x = torch.randn(3, 5, generator=gen(4)).to(dtype)
    good = dc.check_torch(lambda x: make_gelu(0.0).apply(x @ W), x)
    assert good.ok and "promoted to float64" in good.reference, str(good)
    assert dc.check_torch(lambda x: make_gelu(1.0).apply(x @ W), x).verdict == "mismatch"


def test_casts_inside_a_float64_function_are_promoted():
    """Mixed precision inside: the forward computes in float32 and casts back. The reference
    is that forward with the casts promoted; the float32 rounding of the backward is
    measured, and a 1e-3 error still stands out of it."""
    W = torch.randn(4, 3, generator=gen(5))

    def mixed(x):
        return torch.tanh(x.float() @ W).to(torch.float64)

    x = torch.randn(2, 4, generator=gen(6), dtype=torch.float64)
    good = dc.check_torch(mixed, x)
    assert good.ok and "promoted" in good.reference, str(good)
    assert not dc.check_torch(lambda x: ScaleGrad.apply(mixed(x), 1e-3), x).ok


class NumpyTanh(torch.autograd.Function):
    """float32 numpy inside a custom Function: nothing a torch mode can promote."""

    rel = 0.0

    @staticmethod
    def forward(ctx, x):
        y = torch.from_numpy(np.tanh(x.detach().numpy().astype(np.float32)))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y) * (1 + NumpyTanh.rel)


def test_what_cannot_be_promoted_is_said_and_proves_nothing_quietly():
    x = torch.randn(3, 4, generator=gen(7))
    result = dc.check_torch(NumpyTanh.apply, x)
    assert result.reference.startswith("finite differences in float32")
    assert any("could not run as a float64 copy" in n and "numpy" in n for n in result.notes)
    assert result.verdict == "inconclusive" and "float64 copy" in result.inconclusive()[0]
    with pytest.raises(dc.InconclusiveCheck, match="To get a verdict"):
        dc.assert_torch(NumpyTanh.apply, x)
    NumpyTanh.rel = 0.1
    try:
        assert dc.check_torch(NumpyTanh.apply, x).verdict == "mismatch"
    finally:
        NumpyTanh.rel = 0.0


# -- 2. stencils that stay on one side ----------------------------------------------------------


def scaled_backward(forward, derivative, factor):
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * derivative(x) * factor

    return F.apply


NEAR_KINK = [
    ("abs", torch.abs, torch.sign),
    ("relu + x^2", lambda x: torch.relu(x) + x**2, lambda x: (x > 0).to(x.dtype) + 2 * x),
]
NEAR_EDGE = [("sqrt", torch.sqrt, lambda x: 0.5 / torch.sqrt(x)), ("log", torch.log, lambda x: 1 / x)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name, forward, derivative", NEAR_KINK + NEAR_EDGE, ids=[n for n, _, _ in NEAR_KINK + NEAR_EDGE])
def test_points_near_a_kink_or_a_domain_edge_are_compared(name, forward, derivative, dtype):
    """1e-4 ... 3e-4 from the kink of |x| or the edge of sqrt's domain: the ordinary stencil
    (about 1e-3 wide) crosses; the narrowed one does not, so a 3x (2x) wrong backward is
    caught, and the correct one agrees -- not 'kink', not dropped."""
    points = [1e-4, -2e-4, 3e-4, -1e-4] if (name, forward, derivative) in NEAR_KINK else [1e-4, 2e-4, 3e-4]
    x = torch.tensor(points, dtype=dtype)
    good = dc.check_torch(scaled_backward(forward, derivative, 1.0), x)
    assert good.ok and good.quantities[0].verdict == "agree", str(good)
    assert good.taylor["x"].verdict != "skipped"
    bad = dc.check_torch(scaled_backward(forward, derivative, 3.0 if name in ("abs", "relu + x^2") else 2.0), x)
    assert bad.verdict == "mismatch", str(bad)


# -- 3. evidence strength -----------------------------------------------------------------


def test_every_quantity_states_its_precision():
    x = torch.randn(3, 4, generator=gen(8), dtype=torch.float64)
    r64 = dc.check_torch(torch.sin, x)
    r32 = dc.check_torch(torch.sin, x.float())
    assert r64.quantities[0].precision < 1e-8 and r32.quantities[0].precision < 1e-4
    assert "precision" in str(r64).splitlines()[1] and r64.to_dict()["quantities"][0]["precision"] == r64.quantities[0].precision
    assert r64.to_dict()["verdict"] == "ok"


def l1(x):
    return x.abs().sum()


def test_nothing_compared_is_inconclusive_not_ok():
    """sum |x| at 0: every entry sits at the kink; nothing shows the derivative right."""
    r = dc.check_torch(l1, torch.zeros(3, dtype=torch.float64))
    assert not r.ok and r.verdict == "inconclusive" and r.quantities[0].verdict == "inconclusive"
    assert str(r).startswith("derivcheck INCONCLUSIVE")
    with pytest.raises(dc.InconclusiveCheck, match="points away from kinks"):
        dc.assert_torch(l1, torch.zeros(3, dtype=torch.float64))
    # a kink among points that are compared stays a reported fact
    assert dc.check_torch(l1, torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)).ok


class Quantised(torch.autograd.Function):
    """A float64 function whose forward goes through a float32 tensor (``torch.Tensor(...)``
    is float32): its finite differences cannot be sharper than float32."""

    rel = 0.0

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.Tensor(np.sin(x.detach().numpy())).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x) * (1 + Quantised.rel)


def test_an_imprecise_reference_is_inconclusive():
    x = torch.randn(3, 4, generator=gen(9), dtype=torch.float64)
    r = dc.check_torch(Quantised.apply, x)
    assert r.verdict == "inconclusive" and "reference is too imprecise" in r.inconclusive()[0], str(r)
    Quantised.rel = 1e-3
    try:
        assert not dc.check_torch(Quantised.apply, x).ok  # never a quiet pass
    finally:
        Quantised.rel = 0.0


# -- 4. nondeterminism ----------------------------------------------------------------------


def sin_times(factor):
    """``sin`` whose backward is multiplied by ``factor()``, drawn anew on every call."""

    class Sin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.cos() * factor()

    return Sin.apply


def test_a_backward_that_varies_beyond_rounding_fails():
    """A backward right on some calls only (as a result read from a set or dict can be)."""
    calls = iter(range(10**6))
    flaky = sin_times(lambda: 0.06 if next(calls) % 3 == 2 else 1.0)
    x = torch.randn(4, generator=gen(10), dtype=torch.float64)
    r = dc.check_torch(flaky, x)
    found = r.finding("nondeterminism")
    assert not r.ok and not found.ok and "different answers on repeated calls" in found.message
    # it does not buy itself a wide bound: the comparisons stay at rounding size
    assert all(q.worst.tolerance < 1e-6 for q in r.quantities if q.worst is not None)


class Value:
    """micrograd, with one bug: ``__mul__``'s backward assigns where it should accumulate,
    so the gradient depends on the order a set is traversed in."""

    def __init__(self, data, children=()):
        self.data, self.grad, self._backward, self._prev = data, 0.0, lambda: None, set(children)

    def __add__(self, other):
        out = Value(self.data + other.data, (self, other))

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        out = Value(self.data * other.data, (self, other))

        def _backward():
            self.grad = other.data * out.grad  # the bug: = where += belongs
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def tanh(self):
        t = math.tanh(self.data)
        out = Value(t, (self,))

        def _backward():
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def backward(self):
        topo, seen = [], set()

        def build(v):
            if v not in seen:
                seen.add(v)
                for child in v._prev:
                    build(child)
                topo.append(v)

        build(self)
        self.grad = 1.0
        for v in reversed(topo):
            v._backward()


def _micrograd(x):
    vs = [Value(float(v)) for v in x]
    acc = Value(0.0)
    for i, a in enumerate(vs):
        for b in vs[i:]:
            acc = acc + (a * b).tanh() * a
    return acc, vs


def test_a_micrograd_backward_that_depends_on_set_order_fails():
    x = np.random.default_rng(0).standard_normal(5) * 3

    def backward(dout, x):
        out, vs = _micrograd(x)
        out.backward()
        return np.array([v.grad for v in vs]) * float(dout)

    r = dc.check_numpy(lambda x: np.array(_micrograd(x)[0].data), backward, x)
    assert not r.ok and "different answers on repeated calls" in r.failures()[0]


def test_rounding_level_nondeterminism_is_reported_not_failed():
    atomic = sin_times(lambda: 1 + 1e-15 * torch.randn(()).item())  # like atomic adds
    r = dc.check_torch(atomic, torch.randn(4, generator=gen(11), dtype=torch.float64))
    assert r.ok and r.finding("nondeterminism").verdict == "nondeterministic"


# -- 5. exact casts ---------------------------------------------------------------------------


def make_softmin(rel: float):
    """A smoothed minimum written as people write soft-DTW: the temperature built as a
    float32 tensor and widened to the input's dtype (``torch.Tensor([gamma]).to(x.dtype)``)."""

    class SoftMin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma):
            g = torch.Tensor([gamma]).to(x.dtype)
            ctx.save_for_backward(x, g)
            return -g * torch.logsumexp(-x / g, dim=-1)

        @staticmethod
        def backward(ctx, grad):
            x, g = ctx.saved_tensors
            return grad[..., None] * torch.softmax(-x / g, -1) * (1 + rel), None

    return SoftMin.apply


def test_widening_casts_carry_no_rounding_noise():
    x = torch.randn(3, 4, generator=gen(12), dtype=torch.float64)
    good = dc.check_torch(lambda x: make_softmin(0.0)(x, 0.1), x)
    assert good.ok and good.quantities[0].precision < 1e-6, str(good)  # float32-sized before: 1e-3
    bad = dc.check_torch(lambda x: make_softmin(1e-5)(x, 0.1), x)
    assert bad.verdict == "mismatch"


def test_the_noise_mode_rounds_narrowing_casts_only():
    x32 = torch.randn(1000, generator=gen(13))
    x64 = x32.double() + 1e-12
    with RoundingNoise(1, 1.0):
        wide, narrow, same = x32.double(), x64.float(), x64.to(torch.float64)
    assert torch.equal(wide, x32.double()) and torch.equal(same, x64)
    moved = (narrow.double() - x64.float().double()).abs() / x64.abs()
    assert 1e-8 < float(moved.max()) < 1e-5  # a rounding of float32 size


# -- 6. forward mode without a tangent --------------------------------------------------------


def test_forward_mode_without_a_tangent_is_unsupported_unless_asked_for():
    index, src = torch.tensor([0, 1, 0, 1]), torch.randn(4, generator=gen(14), dtype=torch.float64)
    x = torch.randn(2, generator=gen(15), dtype=torch.float64)

    def fn(x):
        return torch.scatter_reduce(x, 0, index, src, "prod")

    auto = dc.check_torch(fn, x)
    assert auto.ok and any("no forward-mode tangent" in n for n in auto.notes)
    explicit = dc.check_torch(fn, x, modes=("rev", "fwd"))
    assert not explicit.ok and explicit.finding("forward mode").verdict == "no tangent"


# -- 7. the user's objects are left as they were ----------------------------------------------


class StoresOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        self.output = torch.tanh(self.lin(x))
        return self.output


def _module(kind: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if kind == "linear":
        return torch.nn.Linear(4, 3), torch.randn(5, 4)
    if kind == "batchnorm1d":
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Dropout(0.3), torch.nn.Linear(6, 2)), torch.randn(5, 4)
    if kind == "batchnorm2d":
        return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)), torch.randn(2, 2, 5, 5)
    if kind == "lstm":
        return torch.nn.LSTM(4, 3, batch_first=True, dropout=0.0), torch.randn(2, 3, 4)
    if kind == "layernorm":
        return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)), torch.randn(3, 4)
    module = StoresOutput()
    x = torch.randn(3, 4)
    with torch.no_grad():
        module(x)  # it has an output attribute before the check
    return module, x


def _state(module: torch.nn.Module) -> tuple:
    tensors = {k: v.clone() for k, v in module.state_dict().items()}
    attributes = {name: sorted(vars(m)) for name, m in module.named_modules()}
    flags = {name: m.training for name, m in module.named_modules()}
    stored = getattr(module, "output", None)
    return tensors, attributes, flags, None if stored is None else stored.clone()


@settings(max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["linear", "batchnorm1d", "batchnorm2d", "lstm", "layernorm", "stores output"]),
    train=st.booleans(),
    wrapped=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_a_check_leaves_modules_and_random_states_as_it_found_them(kind, train, wrapped, dtype):
    module, x = _module(kind)
    module = module.to(dtype).train(train)
    x = x.to(dtype)
    before = _state(module)
    x_before = x.clone()
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), torch.get_default_dtype())
    fn = (lambda t: module(t)[0] if kind == "lstm" else module(t)) if wrapped else (module if kind != "lstm" else lambda t: module(t)[0])
    dc.check_torch(fn, x, max_full=64, directions=1)
    after = _state(module)
    assert before[1:3] == after[1:3]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert (before[3] is None and after[3] is None) or torch.equal(before[3], after[3])
    assert torch.equal(x, x_before)
    assert torch.equal(rngs[0], torch.get_rng_state()) and np.array_equal(rngs[1], np.random.get_state()[1])
    assert rngs[2] == random.getstate() and rngs[3] == torch.get_default_dtype()
    copy.deepcopy(module)  # nothing vmap-wrapped was left behind
    if kind == "stores output":
        float(module.output.sum())


def test_a_backward_that_draws_random_numbers_does_not_move_the_global_rng():
    class Noisy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            torch.rand(3)
            np.random.rand(3)
            random.random()
            return g * 2

    x = torch.randn(3, dtype=torch.float64)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    dc.check_torch(Noisy.apply, x)
    assert torch.equal(state[0], torch.get_rng_state()) and np.array_equal(state[1], np.random.get_state()[1]) and state[2] == random.getstate()


# -- found in review: correct code that must not be a mismatch, state that must survive --------


class Sin32(torch.autograd.Function):
    """sin computed by a float32 library (numpy here), returned as float64: a staircase at
    fine steps, where a narrowed stencil must not read a slope of 0 off one stair."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.from_numpy(np.sin(x.detach().numpy().astype(np.float32)).astype(np.float64))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


def test_a_forward_only_float32_accurate_inside_is_no_false_alarm():
    x = torch.tensor([-1.637054, -1.563783, 1.546373, 0.5], dtype=torch.float64)
    assert dc.check_torch(Sin32.apply, x).verdict != "mismatch"


def test_a_twin_that_computes_another_function_is_not_used():
    """Constants chosen from the dtype (``finfo(x.dtype).eps``, a guard for float16) make the
    float64 copy another function: derivcheck must not blame the backward for it."""

    def normalize(x):
        return x / (x.norm() + torch.finfo(x.dtype).eps)

    assert dc.check_torch(normalize, torch.randn(4, generator=gen(16)) * 1e-6).verdict != "mismatch"
    W = torch.rand(3, 3, generator=gen(17))

    def guarded(x):
        h = (x @ W).half()
        return torch.log(h + (1e-2 if h.dtype == torch.float16 else 1e-12)).float()

    assert dc.check_torch(guarded, torch.rand(3, generator=gen(18)) * 0.05 + 0.01).verdict != "mismatch"


def test_a_backward_that_is_not_reentrant_is_named_as_such():
    class Sq(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            ctx.k = 2.0
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            out = ctx.k * x * g
            ctx.k += 1.0
            return out

    r = dc.check_torch(Sq.apply, torch.randn(4, generator=gen(19), dtype=torch.float64), batched=False)
    assert r.finding("reentrant backward").verdict == "not reentrant" and all(q.ok for q in r.quantities)
    assert not any("dispatch mode" in n for n in r.notes)


def test_a_stateful_forward_is_checked_at_one_state():
    """spectral_norm in training mode runs a power iteration on every call: its buffer is
    reset before each call, so the function checked is one function."""
    from torch.nn.utils.parametrizations import spectral_norm

    for seed in range(3):
        torch.manual_seed(seed)
        m = spectral_norm(torch.nn.Linear(3, 2).double())
        x = torch.randn(4, 3, dtype=torch.float64)
        u = m.parametrizations.weight[0]._u.clone()
        assert dc.check_torch(lambda x: m(x), x).ok
        assert torch.equal(u, m.parametrizations.weight[0]._u)


def test_modules_and_tensors_of_every_kind_survive_the_restore():
    x = torch.randn(4, 3, dtype=torch.float64, generator=gen(20))
    scripted = torch.jit.script(torch.nn.Linear(3, 2).double())
    assert dc.check_torch(lambda t: scripted(t), x).ok
    lazy = torch.nn.LazyLinear(2).double()
    assert dc.check_torch(lambda t: lazy(t), x).ok
    nan = torch.tensor([float("nan"), 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = (nan * nan).sum()
    dc.check_torch(torch.sin, nan)
    y.backward()  # the user's graph through their NaN input still works: it was not written to
    expanded = torch.tensor([float("nan"), 1.0], dtype=torch.float64).expand(3, 2)
    dc.check_torch(torch.sin, expanded)
