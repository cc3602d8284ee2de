"""A bank of gradient code written the way public code writes it -- the custom Functions of
PyTorch's own "Extending PyTorch" docs and tutorials, activation Functions as model
repositories hand-write them (Swish, tanh-GELU), the manual backward passes of the
"backprop ninja" exercise (cross-entropy, BatchNorm), LayerNorm by hand, stock ``nn``
modules in float32, a PINN residual -- each correct version in float64 and float32 with
no false alarm, and each with the bug people actually make, caught.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import derivcheck as dc

DTYPES = [torch.float64, torch.float32]


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype) * scale


# -- PyTorch docs: LinearFunction (with needs_input_grad), MulConstant, MyReLU, Exp ----------


class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias=None):
        ctx.save_for_backward(input, weight, bias)
        output = input.mm(weight.t())
        if bias is not None:
            output += bias.unsqueeze(0).expand_as(output)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, bias = ctx.saved_tensors
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output.mm(weight)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_output.t().mm(input)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_output.sum(0)
        return grad_input, grad_weight, grad_bias


class LinearFunctionBiasBug(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        grad_input, grad_weight, _ = LinearFunction.backward(ctx, grad_output)
        return grad_input, grad_weight, grad_output.mean(0)  # mean instead of sum over the batch


class MulConstant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, constant):
        ctx.constant = constant
        return tensor * constant

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.constant, None


class MyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        ctx.save_for_backward(input)
        return input.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input < 0] = 0
        return grad_input


class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i):
        result = i.exp()
        ctx.save_for_backward(result)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        (result,) = ctx.saved_tensors
        return grad_output * result


@pytest.mark.parametrize("dtype", DTYPES)
def test_pytorch_docs_functions(dtype):
    x, w, b = randn(4, 3, dtype=dtype), randn(2, 3, dtype=dtype, seed=1), randn(2, dtype=dtype, seed=2)
    assert dc.check_torch(LinearFunction.apply, x, w, b).ok
    assert dc.check_torch(MulConstant.apply, x, 2.5).ok
    assert dc.check_torch(MyReLU.apply, x).ok
    assert dc.check_torch(Exp.apply, x).ok
    bad = dc.check_torch(LinearFunctionBiasBug.apply, x, w, b)
    assert {q.name: q.verdict for q in bad.quantities} == {"d out/d input": "agree", "d out/d weight": "agree", "d out/d bias": "disagree"}


# -- activations as model repositories hand-write them -------------------------------------


class SwishImplementation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i):
        result = i * torch.sigmoid(i)
        ctx.save_for_backward(i)
        return result

    @staticmethod
    def backward(ctx, grad_output):
        (i,) = ctx.saved_tensors
        sigmoid_i = torch.sigmoid(i)
        return grad_output * (sigmoid_i * (1 + i * (1 - sigmoid_i)))


class SwishWrong(SwishImplementation):
    @staticmethod
    def backward(ctx, grad_output):
        (i,) = ctx.saved_tensors
        sigmoid_i = torch.sigmoid(i)
        return grad_output * (sigmoid_i * (1 + (1 - sigmoid_i)))  # i dropped


class TanhGELU(torch.autograd.Function):
    C = 0.7978845608028654  # sqrt(2/pi)

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * x * (1 + torch.tanh(TanhGELU.C * (x + 0.044715 * x**3)))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inner = TanhGELU.C * (x + 0.044715 * x**3)
        t = torch.tanh(inner)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * TanhGELU.C * (1 + 3 * 0.044715 * x * x))


class TanhGELUWrongConstant(TanhGELU):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inner = TanhGELU.C * (x + 0.044715 * x**3)
        t = torch.tanh(inner)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * TanhGELU.C * (1 + 0.044715 * x * x))  # 3 forgotten


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_hand_written_activations(dtype, scale):
    x = randn(3, 5, dtype=dtype, scale=scale)
    assert dc.check_torch(SwishImplementation.apply, x, order=2 if dtype == torch.float64 else 1).ok
    assert dc.check_torch(TanhGELU.apply, x, expr="0.5*x*(1 + tanh(0.7978845608028654*(x + 0.044715*x**3)))").ok
    assert not dc.check_torch(SwishWrong.apply, x).ok
    assert not dc.check_torch(TanhGELUWrongConstant.apply, x).ok


# -- manual backward passes ("becoming a backprop ninja") ------------------------------------


def cross_entropy_manual(logits, targets):
    class CE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits):
            ctx.save_for_backward(logits)
            return F.cross_entropy(logits, targets)

        @staticmethod
        def backward(ctx, g):
            (logits,) = ctx.saved_tensors
            dlogits = F.softmax(logits, 1)
            dlogits[range(logits.shape[0]), targets] -= 1
            return g * dlogits / logits.shape[0]

    return CE.apply(logits)


def batchnorm_manual(x, gamma, beta, *, forget_mean_term=False):
    class BN(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, gamma, beta):
            mean = x.mean(0, keepdim=True)
            var = x.var(0, keepdim=True, unbiased=True)
            bnvar_inv = (var + 1e-5) ** -0.5
            bnraw = (x - mean) * bnvar_inv
            ctx.save_for_backward(bnraw, bnvar_inv, gamma)
            return gamma * bnraw + beta

        @staticmethod
        def backward(ctx, dout):
            bnraw, bnvar_inv, gamma = ctx.saved_tensors
            n = dout.shape[0]
            dgamma = (bnraw * dout).sum(0, keepdim=True)
            dbeta = dout.sum(0, keepdim=True)
            if forget_mean_term:
                dx = gamma * bnvar_inv * dout
            else:
                dx = gamma * bnvar_inv / n * (n * dout - dout.sum(0) - n / (n - 1) * bnraw * (dout * bnraw).sum(0))
            return dx, dgamma, dbeta

    return BN.apply(x, gamma, beta)


@pytest.mark.parametrize("dtype", DTYPES)
def test_manual_backward_passes(dtype):
    logits, targets = randn(8, 5, dtype=dtype, scale=3), torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(0))
    assert dc.check_torch(cross_entropy_manual, logits, targets).ok
    x, gamma, beta = randn(6, 4, dtype=dtype, scale=2), randn(1, 4, dtype=dtype, seed=1), randn(1, 4, dtype=dtype, seed=2)
    assert dc.check_torch(batchnorm_manual, x, gamma, beta).ok
    bad = dc.check_torch(lambda *a: batchnorm_manual(*a, forget_mean_term=True), x, gamma, beta)
    assert [q.verdict for q in bad.quantities] == ["disagree", "agree", "agree"]


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm over the last axis with its backward by hand (float32 cancels here)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        rstd = (var + eps).rsqrt()
        xhat = (x - mean) * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight + bias

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight = ctx.saved_tensors
        d = xhat.shape[-1]
        gx = g * weight
        dx = rstd / d * (d * gx - gx.sum(-1, keepdim=True) - xhat * (gx * xhat).sum(-1, keepdim=True))
        reduce = tuple(range(g.dim() - 1))
        return dx, (g * xhat).sum(reduce), g.sum(reduce), None


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_by_hand(dtype):
    x, w, b = randn(3, 6, dtype=dtype, scale=4), randn(6, dtype=dtype, seed=1), randn(6, dtype=dtype, seed=2)
    assert dc.check_torch(LayerNormFunction.apply, x, w, b).ok
    assert dc.check_torch(lambda *a: LayerNormFunction.apply(*a).sum(), x, w, b).ok  # a sum of LayerNorm cancels to ~0


# -- stock modules in float32, as a model is trained ------------------------------------------


def test_stock_modules_in_float32():
    torch.manual_seed(0)
    modules = [
        (torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), torch.randn(5, 16)),
        (torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Tanh(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8, 3)), torch.randn(2, 1, 4, 4)),
        (torch.nn.LayerNorm(6), torch.randn(3, 6) * 5),
        (torch.nn.GRU(3, 4, batch_first=True), torch.randn(2, 5, 3)),
        (torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True), torch.randn(2, 3, 8)),
    ]
    for module, x in modules:
        result = dc.check_torch(module, x)
        assert result.ok, f"{type(module).__name__}:\n{result}"


def test_sgd_step_of_the_classic_three_layer_net():
    """Linear(16,8) -> Linear(8,4) -> Linear(4,2) with CrossEntropyLoss: the gradient a
    manual ``w - lr * grad`` step and ``optim.SGD`` use, checked as the loss's gradient."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    x, y = torch.randn(10, 16), torch.randint(0, 2, (10,))
    result = dc.check_torch(lambda inp, labels: F.cross_entropy(model(inp), labels), x, y)
    assert result.ok
    assert dc.check_torch(lambda inp: F.cross_entropy(model(inp), y), x).ok


# -- a PINN residual ------------------------------------------------------------------------


def burgers_residual(u, xt, nu=0.01 / 3.141592653589793):
    value = u(xt)
    du = torch.autograd.grad(value, xt, torch.ones_like(value), create_graph=True)[0]
    u_x, u_t = du[:, 0], du[:, 1]
    u_xx = torch.autograd.grad(u_x, xt, torch.ones_like(u_x), create_graph=True)[0][:, 0]
    return u_t + value * u_x - nu * u_xx


def test_burgers_residual_and_a_sign_error():
    operator = "d(u,t) + u*d(u,x) - nu*d(u,x,2)"
    options = dict(constants={"nu": 0.01 / 3.141592653589793}, domain={"x": [-1, 1], "t": [0, 1]}, points=12)
    assert dc.check_operator(burgers_residual, operator, ["x", "t"], **options).ok
    wrong = lambda u, xt: burgers_residual(u, xt, nu=-0.01 / 3.141592653589793)  # noqa: E731 - the sign of the viscosity
    assert not dc.check_operator(wrong, operator, ["x", "t"], **options).ok
