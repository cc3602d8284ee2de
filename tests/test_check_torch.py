"""check_torch: verdicts, names, gradcheck's feature set, code as people write it.

Every feature has a mutation test (a seeded bug it catches) and a no-false-alarm test
(correct code, float64 and float32, that passes).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import derivcheck as dc


class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class WrongSquare(Square):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return x * g  # missing factor 2


class MulWrongSecond(torch.autograd.Function):
    """f(a, b) = a * b with b's gradient wrong."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g * b, g * b  # should be g * a


def x64(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.5, 1.5, shape))


# -- verdicts and messages --------------------------------------------------------------


def test_right_and_wrong_backward():
    r = dc.check_torch(Square.apply, x64(3, 2))
    assert r.ok and r.mode == "full" and r.quantities[0].verdict == "agree"
    assert r.quantities[0].name == "d out/d x"  # the argument's name, from Square.forward
    assert r.taylor["x"].verdict == "order 2" and r.taylor["x"].order == pytest.approx(2, abs=0.1)
    bad = dc.check_torch(WrongSquare.apply, x64(3, 2))
    assert not bad.ok
    text = str(bad)
    first = text.splitlines()[0]
    assert first.startswith("derivcheck MISMATCH: WrongSquare.apply") and "d out/d x" in first  # the failure, on line one
    assert "your backward (reverse-mode autograd) disagrees with finite differences of your forward" in text
    assert bad.taylor["x"].verdict == "wrong gradient" and bad.taylor["x"].implied_error > bad.taylor["x"].bound


def test_two_engines_blame_the_backward_not_both():
    bad = dc.check_torch(WrongSquare.apply, x64(3), modes=("rev",))
    assert "your backward (reverse-mode autograd) disagrees with finite differences of your forward" in bad.quantities[0].message
    assert "cannot tell" not in str(bad)


def test_names_the_wrong_input_and_lists_it_first():
    r = dc.check_torch(MulWrongSecond.apply, x64(3), x64(3, seed=1))
    assert {q.name: q.verdict for q in r.quantities} == {"d out/d a": "agree", "d out/d b": "disagree"}
    with pytest.raises(dc.DerivativeMismatch) as info:
        dc.assert_torch(MulWrongSecond.apply, x64(3), x64(3, seed=1))
    assert isinstance(info.value, AssertionError)
    assert str(info.value).splitlines()[0].count("d out/d b") == 1
    assert "worst at d out[" in str(info.value) and "/d b[" in str(info.value)


def test_module_parameters_are_named():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2).double()
    r = dc.check_torch(layer, x64(4, 3))
    assert r.ok
    assert [q.name for q in r.quantities] == ["d out/d input", "d out/d weight", "d out/d bias"]
    assert "weight[" in r.quantities[1].worst.label


def test_name_argument_and_readable_builtin_names():
    assert dc.check_torch(torch.tanh, x64(2)).what == "torch.tanh"
    assert dc.check_torch(lambda t: t.sin(), x64(2), name="my sine").what == "my sine"


def test_symbolic_reference_names_autograd():
    r = dc.check_torch(WrongSquare.apply, x64(4), expr="x**2")
    q = r.quantities[0]
    assert q.odd_engine == "autograd" and "symbolic" in q.engines


def test_to_dict_is_json():
    r = dc.check_torch(WrongSquare.apply, x64(2))
    doc = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert doc["ok"] is False and doc["failures"] and doc["quantities"][0]["verdict"] == "disagree"
    assert {f["name"] for f in doc["findings"]} >= {"zero output gradient", "gradient dtype/device/shape/layout"}


# -- no false alarms: the cases that used to cry wolf ------------------------------------


def test_float32_linear_is_not_a_false_alarm():
    torch.manual_seed(0)
    r = dc.check_torch(torch.nn.Linear(3, 2), torch.randn(4, 3))
    assert r.ok, str(r)
    assert r.dtype == "float32" and all(t.verdict == "affine" for t in r.taylor.values())


def test_relu_at_zero_is_a_kink_not_a_failure():
    r = dc.check_torch(torch.relu, torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    assert r.ok and r.quantities[0].verdict == "kink"
    assert r.taylor["inputs[0]"].ok
    assert dc.check_torch(torch.abs, torch.tensor([0.0, 1.0], dtype=torch.float64)).quantities[0].verdict == "kink"


def test_piecewise_constant_functions_are_not_failures():
    for seed in range(5):
        x = torch.from_numpy(np.random.default_rng(seed).uniform(0, 5, 6))
        r = dc.check_torch(torch.round, x)
        assert r.ok, str(r)
        r = dc.check_torch(lambda t: torch.round(t, decimals=3), x * 3)
        assert r.ok, str(r)


def test_saturated_chain_in_both_dtypes():
    def f(x, y, w):
        return torch.logsumexp(torch.sigmoid(torch.sigmoid(torch.sigmoid(torch.sigmoid(x @ w)))) * y, -1)

    for dtype in (torch.float64, torch.float32):
        for seed in range(4):
            g = torch.Generator().manual_seed(seed)
            args = [torch.randn(1, 2, generator=g, dtype=dtype) * 5, torch.randn(1, 2, generator=g, dtype=dtype), torch.randn(2, 2, generator=g, dtype=dtype)]
            assert dc.check_torch(f, *args).ok


def test_cancelling_compositions_in_float32():
    """log_softmax then logsumexp is constant: its float32 gradient is pure rounding noise,
    quantised to a neighbouring float; the noise model must see that, not blame it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g) * 10
    for fn in (lambda t: torch.logsumexp(torch.log_softmax(t, -1), -1), lambda t: torch.nn.functional.layer_norm(t, t.shape[-1:]).sum(-1), lambda t: torch.softmax(t, -1).sum()):
        assert dc.check_torch(fn, x).ok
        assert dc.check_torch(fn, x.double()).ok


# -- what it still catches (mutations) ----------------------------------------------------


def make_softplus(rel: float):
    class Softplus(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.nn.functional.softplus(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.sigmoid(x) * (1 + rel)

    return Softplus.apply


@pytest.mark.parametrize(("dtype", "smallest"), [(torch.float64, 1e-8), (torch.float32, 1e-3)])
def test_seeded_relative_errors_are_caught(dtype, smallest):
    x = torch.randn(6, dtype=dtype, generator=torch.Generator().manual_seed(0))
    assert dc.check_torch(make_softplus(0.0), x).ok
    for rel in (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        if rel >= smallest:
            assert not dc.check_torch(make_softplus(rel), x).ok, rel


# -- code as people write it -----------------------------------------------------------


def test_non_tensor_and_integer_arguments_pass_through():
    def loss(logits, labels, scale, reduction=None):
        assert labels.dtype == torch.int64 and isinstance(scale, float) and reduction is None
        return torch.nn.functional.cross_entropy(logits * scale, labels)

    logits = torch.randn(4, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1])
    r = dc.check_torch(loss, logits, labels, 0.5, None)
    assert r.ok and [q.name for q in r.quantities] == ["d out/d logits"]
    assert any("labels (torch.int64 tensor)" in n for n in r.notes)


def test_requires_grad_selects_what_is_differentiated():
    a = torch.randn(3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, dtype=torch.float64)  # requires_grad=False: a target, passed through
    r = dc.check_torch(torch.nn.functional.mse_loss, a, target)
    assert r.ok and [q.name for q in r.quantities] == ["d out/d input"]  # mse_loss(input, target)


def test_tuple_list_and_dict_outputs_and_inputs():
    def f(x, params):
        h = torch.tanh(x @ params["w"])
        return {"loss": (h**2).sum(), "hidden": h, "argmax": h.argmax()}

    x = torch.randn(2, 3, dtype=torch.float64)
    params = {"w": torch.randn(3, 4, dtype=torch.float64)}
    r = dc.check_torch(f, x, params)
    assert r.ok
    assert [q.name for q in r.quantities] == ["d outputs/d x", "d outputs/d params['w']"]
    assert any("out['argmax']" in n for n in r.notes)
    assert dc.check_torch(lambda a: [a.sin(), (a.cos(), a.exp())], x).ok


def test_outputs_that_do_not_require_grad_are_left_out():
    def f(x):
        return x.sin(), x.detach() * 2  # the second output is detached on purpose

    r = dc.check_torch(f, x64(3))
    assert r.ok and any("does not require grad" in n for n in r.notes)


def test_a_forward_detached_by_mistake_is_caught():
    r = dc.check_torch(lambda t: torch.from_numpy(t.detach().numpy() ** 2), x64(3))
    assert not r.ok and r.quantities[0].verdict == "disagree"
    assert any("no output requires grad" in n for n in r.notes)


def test_random_forwards_are_reseeded():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    assert dc.check_torch(model, torch.randn(3, 4, dtype=torch.float64)).ok
    generator = torch.Generator().manual_seed(1)
    r = dc.check_torch(lambda t: t * torch.rand(t.shape, generator=generator, dtype=t.dtype), x64(3))
    found = r.finding("deterministic forward")
    assert not r.ok and not found.ok and "cannot check a non-deterministic forward by finite differences" in found.message


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_judged_at_its_own_precision(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.GELU(), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2)).to(dtype)
    r = dc.check_torch(model, torch.randn(4, 3).to(dtype))
    assert r.ok and r.dtype == str(dtype).replace("torch.", "")
    assert any("run the same code in float32 or float64" in n for n in r.notes)
    assert not dc.check_torch(make_softplus(0.5), torch.randn(6).to(dtype)).ok


def test_broadcast_shaped_gradients_from_a_custom_function_are_summed_by_autograd():
    class AddBias(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            return x + b

        @staticmethod
        def backward(ctx, g):
            return g, g.sum(0, keepdim=True)  # (1, M) for a (M,) bias: autograd sums it

    assert dc.check_torch(AddBias.apply, x64(4, 3), x64(3)).ok


# -- complex --------------------------------------------------------------------------------


def complex_input(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


def test_complex_functions_pass():
    z = complex_input(3)
    for fn in (lambda t: t * t, torch.exp, lambda t: t.abs(), lambda t: (t * t.conj()).real, torch.fft.fft, lambda t: torch.view_as_real(t).sum(-1)):
        r = dc.check_torch(fn, z)
        assert r.ok, str(r)
    r = dc.check_torch(lambda t: t * t, z)
    assert ".re" in r.quantities[0].worst.label or ".im" in r.quantities[0].worst.label


def test_real_to_complex_and_complex_to_real():
    x = x64(4)
    assert dc.check_torch(torch.polar, x, x64(4, seed=1)).ok
    assert dc.check_torch(torch.view_as_complex, torch.randn(3, 2, dtype=torch.float64)).ok


class ComplexSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (2 * z).conj()  # PyTorch's convention: grad_out * conj(df/dz) for holomorphic f


class ComplexSquareNoConj(ComplexSquare):
    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * 2 * z  # the classic bug: the conjugate forgotten


def test_complex_custom_function_and_the_missing_conjugate():
    z = complex_input(3)
    assert dc.check_torch(ComplexSquare.apply, z, modes=("rev",)).ok
    bad = dc.check_torch(ComplexSquareNoConj.apply, z, modes=("rev",))
    assert not bad.ok and bad.quantities[0].verdict == "disagree"


# -- forward mode ---------------------------------------------------------------------------


class CubeWithJvp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.x = x
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g

    @staticmethod
    def jvp(ctx, t):
        return 3 * ctx.x**2 * t


class CubeWrongJvp(CubeWithJvp):
    @staticmethod
    def jvp(ctx, t):
        return 3 * ctx.x * t  # wrong


def test_forward_mode_is_checked_and_blamed():
    x = x64(4)
    r = dc.check_torch(CubeWithJvp.apply, x)
    assert r.ok and "forward_ad" in r.quantities[0].engines
    bad = dc.check_torch(CubeWrongJvp.apply, x)
    assert not bad.ok and bad.quantities[0].odd_engine == "forward_ad"
    assert "your forward-mode derivative (jvp) disagrees" in bad.quantities[0].message
    only_fwd = dc.check_torch(CubeWrongJvp.apply, x, modes=("fwd",))
    assert not only_fwd.ok and only_fwd.quantities[0].engines == ["forward_ad", "finite_diff"]


def test_forward_mode_support_is_auto_or_required():
    r = dc.check_torch(Square.apply, x64(3))  # no jvp: forward mode skipped with the reason
    assert r.ok and any("forward mode not checked" in n for n in r.notes)
    with pytest.raises(dc.InvalidArgument, match="does not support forward-mode AD"):
        dc.check_torch(Square.apply, x64(3), modes=("rev", "fwd"))


# -- batched gradients (vmap) -----------------------------------------------------------


class Cube(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class WrongBackwardCube(Cube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * g


class CubeWithBadVmapRule(torch.autograd.Function):
    """Right forward and backward; its vmap rule sends batches to a Function whose backward
    is wrong, so only code that vmaps it (per-sample gradients) gets wrong gradients."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g

    @staticmethod
    def vmap(info, in_dims, x):
        return WrongBackwardCube.apply(x), in_dims[0]


def test_vmap_rules_are_checked():
    x = x64(3, 2)
    r = dc.check_torch(Cube.apply, x)
    assert r.ok
    assert r.finding("vmap over inputs (torch.func)").verdict == "agree"
    assert r.finding("batched backward (vmap over output gradients)").verdict == "agree"
    bad = dc.check_torch(CubeWithBadVmapRule.apply, x)
    assert not bad.ok and all(q.ok for q in bad.quantities)  # the unbatched derivative is right
    assert bad.finding("vmap over inputs (torch.func)").verdict == "differs"


def test_vmap_unsupported_is_skipped_unless_required():
    r = dc.check_torch(Square.apply, x64(3))  # an old-style Function: no torch.func support
    assert r.ok and r.finding("vmap over inputs (torch.func)").verdict == "skipped"
    required = dc.check_torch(Square.apply, x64(3), batched=True)
    assert not required.ok and required.finding("vmap over inputs (torch.func)").verdict == "failed"
    assert dc.check_torch(Square.apply, x64(3), batched=False).finding("vmap over inputs (torch.func)") is None


# -- undefined and zero output gradients, attributes -----------------------------------


class SinCos(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x)
        return x.sin(), x.cos()

    @staticmethod
    def backward(ctx, ga, gb):
        (x,) = ctx.saved_tensors
        out = torch.zeros_like(x)
        if ga is not None:
            out = out + ga * x.cos()
        if gb is not None:
            out = out - gb * x.sin()
        return out


class SinCosNoneUnsafe(SinCos):
    @staticmethod
    def backward(ctx, ga, gb):
        (x,) = ctx.saved_tensors
        return ga * x.cos() - gb * x.sin()  # crashes when one output is unused


class IgnoresGradOutput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.ones_like(x)  # should be g * ones


def test_undefined_output_gradients():
    x = x64(3)
    assert dc.check_torch(SinCos.apply, x).finding("undefined output gradients").ok
    bad = dc.check_torch(SinCosNoneUnsafe.apply, x)
    assert not bad.ok and bad.finding("undefined output gradients").verdict == "backward raised"
    assert all(q.ok for q in bad.quantities)


def test_backward_not_multiplied_by_grad_output():
    r = dc.check_torch(IgnoresGradOutput.apply, x64(3))
    zero = r.finding("zero output gradient")
    assert not r.ok and not zero.ok and "not multiplied by grad_output" in zero.message


def test_gradient_attributes_checked():
    from derivcheck.check import torch_properties
    from derivcheck.check.torch_autograd import Graph
    from derivcheck.check.torch_call import TorchCall

    graph = Graph(TorchCall(torch.sin, [x64(3)]))
    assert torch_properties.gradient_attributes(graph, graph.raw_grads(np.ones(3))).ok
    found = torch_properties.gradient_attributes(graph, [torch.zeros(3, dtype=torch.float32)])
    assert not found.ok and "dtype torch.float32, its input torch.float64" in found.message


# -- nondeterminism ---------------------------------------------------------------------------


class NoisyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos() * (1 + 1e-14 * torch.randn(()).item())  # like atomicAdd ordering on a GPU


def test_nondeterminism_is_reported_not_blamed():
    r = dc.check_torch(NoisyBackward.apply, x64(4))
    found = r.finding("nondeterminism")
    assert r.ok and found.verdict == "nondeterministic" and 0 < found.measured < 1e-12
    strict = dc.check_torch(NoisyBackward.apply, x64(4), nondet_tol=0.0)
    assert not strict.ok and not strict.finding("nondeterminism").ok and all(q.ok for q in strict.quantities)
    assert dc.check_torch(torch.sin, x64(4), nondet_tol=0.0).finding("nondeterminism").verdict == "deterministic"


# -- second order -------------------------------------------------------------------------------


class DetachedCosBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x).detach() + 0 * x  # the bug: cos(x) detached, so d2 is lost


class NumpyBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.from_numpy(np.cos(x.detach().numpy()))  # outside autograd


class OnceSin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


def test_second_order():
    x = x64(3)
    assert dc.check_torch(torch.sin, x, order=2).ok
    assert dc.check_torch(lambda t: torch.tanh(t) * t.sum(), x.float(), order=2).ok
    wrong = dc.check_torch(DetachedCosBackward.apply, x, order=2)
    assert wrong.quantities[0].verdict == "agree"  # the first derivative is right
    assert wrong.quantities[-1].verdict == "disagree" and "create_graph" in wrong.quantities[-1].engines[0]
    numpy_backward = dc.check_torch(NumpyBackward.apply, x, order=2)
    found = numpy_backward.finding("second derivative u^T H v of sum(w*out)")
    assert not numpy_backward.ok and found.verdict == "not differentiable" and "@once_differentiable" in found.message
    once = dc.check_torch(OnceSin.apply, x, order=2)
    assert once.ok and once.finding("second derivative u^T H v of sum(w*out)").verdict == "once differentiable"


# -- sizes, memory layouts, empty tensors -------------------------------------------------------


def test_large_inputs_use_directional_derivatives():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.Tanh(), torch.nn.Linear(100, 4)).double()
    r = dc.check_torch(model, torch.randn(2, 200, dtype=torch.float64))
    assert r.ok and r.mode == "directional" and any("directional derivatives" in n for n in r.notes)
    assert r.quantities[0].name == "u^T J v (all inputs)"
    fast = dc.check_torch(model, torch.randn(2, 200, dtype=torch.float64), fast=True)
    assert fast.ok and fast.mode == "directional" and not fast.taylor


def test_directional_disagreement_is_drilled_down_by_input():
    big = torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = dc.check_torch(MulWrongSecond.apply, big, big.clone() + 1, max_full=16)
    names = {q.name: q.verdict for q in r.quantities}
    assert names["u^T J v (all inputs)"] == "disagree"
    assert names["u^T (d out/d a) v"] == "agree" and names["u^T (d out/d b) v"] == "disagree"


def test_directional_catches_what_fast_mode_gradcheck_misses():
    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.tanh(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (1 - torch.tanh(x) ** 2) * (1 + 1e-6)

    x = torch.randn(60, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(Off.apply, (x.clone().requires_grad_(),), fast_mode=True)
    assert not dc.check_torch(Off.apply, x, fast=True).ok


def test_overlapping_memory_and_empty_tensors():
    base = torch.randn(3, 1, dtype=torch.float64)
    r = dc.check_torch(lambda t: t.sin(), base.expand(3, 4))
    assert r.ok and any("overlapping memory" in n and "materialized copy" in n for n in r.notes)
    r = dc.check_torch(lambda a, b: a.sin().sum() + b.sum(), x64(3), torch.zeros(0, 2, dtype=torch.float64))
    assert r.ok and any("has no elements" in n for n in r.notes)
    empty = dc.check_torch(torch.sin, torch.zeros(0, dtype=torch.float64))
    assert empty.ok and empty.mode == "empty" and any("nothing to check" in n for n in empty.notes)


def test_infinite_inputs_are_not_differentiated():
    x = torch.tensor([[1.0, -float("inf"), 0.5], [0.2, 0.3, -0.1]], dtype=torch.float64)
    r = dc.check_torch(lambda t: torch.softmax(t, -1), x)
    assert r.ok, str(r)
    assert any("infinite or NaN" in n for n in r.notes)


# -- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: dc.check_torch(Square.apply, x64(2), order=3), dc.InvalidArgument, "order must be 1 or 2, got 3"),
        (lambda: dc.check_torch(Square.apply, [1.0, 2.0]), dc.InvalidArgument, "no input is a floating-point or complex tensor"),
        (lambda: dc.check_torch(Square.apply, torch.tensor([1, 2])), dc.InvalidArgument, "no input is a floating-point or complex tensor"),
        (lambda: dc.check_torch("not callable", x64(2)), dc.InvalidType, "fn must be callable"),
        (lambda: dc.check_torch(Square.apply), dc.InvalidArgument, "at least one input"),
        (lambda: dc.check_torch(lambda a, b: a + b, x64(2), x64(3)), dc.InvalidArgument, "calling <lambda> on the inputs failed: RuntimeError"),
        (lambda: dc.check_torch(lambda a: 3.0, x64(2)), dc.InvalidType, "must return a floating-point or complex tensor"),
        (lambda: dc.check_torch(Square.apply, x64(2), reference="symbolic"), dc.InvalidArgument, "needs expr="),
        (lambda: dc.check_torch(Square.apply, x64(2), reference="magic"), dc.InvalidArgument, "reference must be one of"),
        (lambda: dc.check_torch(Square.apply, x64(2), max_full=0), dc.InvalidArgument, "max_full"),
        (lambda: dc.check_torch(Square.apply, x64(2), modes=("sideways",)), dc.InvalidArgument, "modes must be"),
        (lambda: dc.check_torch(Square.apply, x64(2), nondet_tol=-1), dc.InvalidArgument, "nondet_tol"),
        (lambda: dc.check_torch(Square.apply, x64(2).to_sparse()), dc.InvalidArgument, "to_dense()"),
        (lambda: dc.check_torch(lambda t: torch.special.zeta(t, t), x64(2)), dc.InvalidArgument, "the backward of <lambda> raised"),
        (lambda: dc.check_torch(Square.apply, x64(2), seed=-1), dc.InvalidArgument, "seed must be a non-negative integer, got -1"),
        (lambda: dc.check_torch(Square.apply, x64(2), tolerance=1e-3), dc.InvalidType, "tolerance must be a derivcheck.Tolerance"),
        (lambda: dc.check_torch(Square.apply, x64(2), taylor="yes"), dc.InvalidType, "taylor must be True or False"),
        (lambda: dc.check_torch(Square.apply, x64(2), name=3), dc.InvalidType, "name must be a string"),
        (lambda: dc.check_torch(torch.sin, torch.empty(3, device="meta")), dc.InvalidArgument, "meta device"),
        (lambda: dc.check_numpy(np.sin, lambda g, a: (g,), np.ones(2), seed=-1), dc.InvalidArgument, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, dc.DerivcheckError)
    assert fragment in str(info.value)


# -- found by a new user's review ---------------------------------------------------------------


def test_a_forward_that_takes_derivatives_itself():
    """Forces F = -dE/dx (also gradient penalties, PINN losses): the forward calls
    torch.autograd.grad, so finite differences must run it with grad enabled."""
    torch.manual_seed(0)
    energy = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()

    def forces(x):
        x = x if x.requires_grad else x.clone().requires_grad_(True)
        return -torch.autograd.grad(energy(x).sum(), x, create_graph=True)[0]

    x = torch.randn(4, 3, dtype=torch.float64)
    assert dc.check_torch(forces, x).ok and dc.check_torch(forces, x, fast=True).ok


def test_masked_scores_with_infinities():
    causal = torch.triu(torch.full((4, 4), float("-inf"), dtype=torch.float64), 1)
    q, k = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    r = dc.check_torch(lambda a, b: a @ b.T / 8**0.5 + causal, q, k)
    assert r.ok, str(r)
    assert dc.check_torch(lambda a, b: torch.softmax(a @ b.T / 8**0.5 + causal, -1), q, k).ok


def test_linear_algebra_that_decomposes_differently_under_a_dispatch_mode():
    a = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for fn in (torch.linalg.svdvals, lambda m: torch.linalg.matrix_norm(m, ord=2), lambda m: torch.linalg.matrix_norm(m, ord="nuc"), torch.linalg.cond):
        assert dc.check_torch(fn, a).ok


def test_ties_skip_the_vmap_comparison():
    r = dc.check_torch(lambda x: x.max() + x.sum(), torch.tensor([1.0, 3.0, 3.0], dtype=torch.float64))
    assert r.ok and r.quantities[0].verdict == "kink"
    assert r.finding("vmap over inputs (torch.func)").verdict == "skipped"


def test_embedding_padding_row_is_zero_by_design():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4, padding_idx=0), torch.nn.Flatten(), torch.nn.Linear(12, 2)).double()
    r = dc.check_torch(model, torch.tensor([[5, 3, 0], [7, 0, 0]]))
    assert r.ok and any("padding row" in n for n in r.notes)


class ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, s):
        ctx.save_for_backward(x, w)
        ctx.s = s
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, ctx.s * (g.T @ x), g.sum(0), None


class ScaledLayer(torch.nn.Linear):
    def __init__(self, n_in, n_out, s=1.0):
        super().__init__(n_in, n_out)
        self.s = s

    def forward(self, x):
        return ScaledLinear.apply(x, self.weight, self.bias, self.s)


@pytest.mark.parametrize("fast", [False, True])
def test_directional_float32_bounds_do_not_grow_with_the_parameter_count(fast):
    """One layer's weight gradient off by 1% in a 20k-parameter float32 MLP: the entries'
    rounding floors add up in quadrature, not in absolute value, so it is caught."""
    torch.manual_seed(0)
    good = torch.nn.Sequential(ScaledLayer(32, 128), torch.nn.GELU(), ScaledLayer(128, 128), torch.nn.GELU(), ScaledLayer(128, 10))
    x = torch.randn(8, 32)
    assert dc.check_torch(good, x, fast=fast).ok
    good[2].s = 1.01
    assert not dc.check_torch(good, x, fast=fast).ok


class ExpForgotSaveForForward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors  # empty in forward mode: ctx.save_for_forward was forgotten
        return t * y


def test_a_jvp_that_raises_is_a_broken_jvp():
    r = dc.check_torch(ExpForgotSaveForForward.apply, x64(4))
    found = r.finding("forward mode")
    assert not r.ok and found.verdict == "jvp raised" and "save_for_forward" in found.message


def test_constants_are_widened_with_the_inputs():
    a = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 2)  # float32, requires_grad=False: passed through, but float64 for finite differences
    r = dc.check_torch(lambda x, m: (x @ m).tanh(), a, w)
    assert r.ok and not any("failed in float64" in n for n in r.notes)


def test_many_input_coordinates_use_directional_derivatives():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.LazyLinear(1)).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    net(x)
    r = dc.check_torch(lambda inp: net(inp).sum(), x)
    assert r.ok and r.mode == "directional" and any("8 forward passes each" in n for n in r.notes)


class SwishSavedGrad(torch.autograd.Function):
    """CoinCheung/pytorch-loss's SwishFunction pattern: the derivative computed in forward,
    kept on ctx and multiplied in place in backward (right once, wrong a second time)."""

    @staticmethod
    def forward(ctx, feat, wrong=False):
        sig = torch.sigmoid(feat)
        ctx.grad = sig * (1 + (-1 if wrong else 1) * feat * (1 - sig))
        return feat * sig

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.grad
        grad *= grad_output  # in place: the saved derivative is gone after one backward
        return grad, None


def test_a_backward_that_is_not_reentrant_is_reported_and_does_not_hide_a_wrong_formula():
    x = x64(4, 3) * 2 - 2
    r = dc.check_torch(SwishSavedGrad.apply, x)
    found = r.finding("reentrant backward")
    assert r.ok and found.verdict == "not reentrant" and found.measured > 0
    assert not dc.check_torch(SwishSavedGrad.apply, x, nondet_tol=0.0).ok
    wrong = dc.check_torch(SwishSavedGrad.apply, x, True)
    assert not wrong.ok and wrong.quantities[0].verdict == "disagree"


def test_a_mask_sentinel_does_not_loosen_float32_bounds():
    """-1e6 written into masked logits (as large-margin softmax losses do) is an operand of
    softmax, which subtracts the maximum first: it must not set the rounding floor."""

    def masked_ce(x, labels, scale):
        logits = x.masked_fill(torch.nn.functional.one_hot(labels, x.shape[1]).bool(), -1e6)
        return torch.nn.functional.cross_entropy(logits * scale, (labels + 1) % x.shape[1])

    x, labels = torch.randn(5, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3, 1, 2, 0])
    assert dc.check_torch(masked_ce, x, labels, 1.0).ok
    r = dc.check_torch(lambda a, b: ScaleGradBy.apply(masked_ce(a, b, 1.0), 1.02), x, labels)
    assert not r.ok


class ScaleGradBy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.factor, None


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.neg() * ctx.alpha, None


class SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


def test_deliberate_non_derivatives_are_named_as_such():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reversal = dc.check_torch(GradientReversal.apply, x, 0.5)
    assert not reversal.ok and "-0.5 times the derivative at every entry: a gradient reversal or gradient multiplier?" in reversal.failures()[0]
    ste = dc.check_torch(SignSTE.apply, x)
    assert not ste.ok and "a straight-through estimator" in ste.failures()[0]
