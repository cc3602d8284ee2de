"""Field problems in the torch engine: PINN-style autograd.

Each variable is a leaf tensor ``(P,)`` with ``requires_grad=True``; fields are computed
from them (the exact solution evaluated with torch ops, or the ``nn.Sequential`` network
on ``torch.stack(variables, dim=1)``); every derivative is a nested
``torch.autograd.grad(..., create_graph=True)``, of compound expressions too -- exactly as
PINN code computes residuals. The PINN-loss gradients then go through ``backward()`` of a
loss built from those derivatives (third-order autograd).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from derivcheck._lazy import sympy as sp

from derivcheck.evaluate import Evaluator
from derivcheck.fields import FieldProblem, FieldQuantity, pinn_values
from derivcheck.operators import torch_gradient_all, torch_hessian, torch_partial
from derivcheck.values import EngineResult, EngineValue, Skipped


class _TorchFields:
    def __init__(self, problem: FieldProblem, device: str, points: np.ndarray | None = None, model: Any = None):
        import torch

        self.torch = torch
        self.problem = problem
        self.dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        self.device = device
        pts = problem.points if points is None else points
        self.leaves = [torch.tensor(pts[:, i], dtype=self.dtype, device=device, requires_grad=True) for i in range(pts.shape[1])]
        spec = problem.spec
        env: dict[sp.Symbol, Any] = {s: leaf for s, leaf in zip(spec.variable_symbols, self.leaves)}
        env.update(spec.constant_values())
        self.env = env
        if problem.kind == "exact":
            evaluator = Evaluator("torch", env, {}, None, like=self.leaves[0])
            self.fields = {name: evaluator(expr) for name, expr in problem.solution_exprs().items()}
        else:
            self.model = model if model is not None else build_model(problem, self.dtype, device)
            out = self.model(torch.stack(self.leaves, dim=1))
            self.fields = {name: out[:, i] for i, name in enumerate(spec.fields)}
        self.partials: dict[tuple[sp.Expr, tuple[int, ...]], Any] = {}
        self.evaluator = Evaluator("torch", env, self.fields, self._derivative, like=self.leaves[0])

    def _derivative(self, node: sp.Derivative) -> Any:
        """Differentiate step by step, caching every partial chain: ``u_xx`` reuses
        ``u_x``, and the first derivatives of an expression w.r.t. all variables come from
        one ``autograd.grad`` call (as a hand-written PINN residual would do it)."""
        position = {s: i for i, s in enumerate(self.problem.spec.variable_symbols)}
        chain = tuple(position[v] for v, n in node.variable_count for _ in range(int(n)))
        value = self.evaluator(node.expr)
        for depth in range(1, len(chain) + 1):
            key = (node.expr, chain[:depth])
            if key not in self.partials:
                if depth == 1:
                    grads = torch_gradient_all(value, self.leaves)
                    for i, g in enumerate(grads):
                        self.partials[(node.expr, (i,))] = g
                else:
                    self.partials[key] = torch_partial(value, self.leaves[chain[depth - 1]])
            value = self.partials[key]
        return value

    def value(self, expr: sp.Expr) -> Any:
        return self.evaluator(self.problem.spec.with_constants(expr))


def build_model(problem: FieldProblem, dtype: Any, device: str) -> Any:
    assert problem.network is not None and problem.params is not None
    return problem.network.torch_model(problem.params, dtype, device)


def pinn_losses(problem: FieldProblem, device: str, model: Any) -> tuple[Any, Any]:
    """``(L_r, L_b)`` of the network as differentiable torch scalars."""
    spec = problem.spec
    interior = _TorchFields(problem, device, model=model)
    residual_sq = sum(interior.value(spec.residual_expr(eq)) ** 2 for eq in spec.equations)
    loss_r = residual_sq.mean()
    assert problem.boundary is not None
    boundary = _TorchFields(problem, device, points=problem.boundary, model=model)
    exact = Evaluator("torch", boundary.env, {}, None, like=boundary.leaves[0])
    loss_b = sum((boundary.fields[name] - exact(expr)) ** 2 for name, expr in problem.solution_exprs().items()).mean()
    return loss_r, loss_b


def compute_fields(problem: FieldProblem, quantities: Sequence[FieldQuantity], device: str) -> EngineResult:
    import torch

    note = f"{device}, {problem.dtype}, nested autograd.grad(create_graph=True)"
    result: EngineResult = {}
    state = _TorchFields(problem, device)
    spec = problem.spec

    def out(tensor: Any) -> EngineValue:
        return EngineValue(tensor.detach().to("cpu", torch.float64).numpy(force=True).copy(), dtype=problem.dtype, note=note)

    for q in quantities:
        if q.kind in ("derivative", "operator", "residual"):
            result[q.name] = out(state.value(q.expr))
        elif q.kind == "forcing":
            assert q.equation is not None
            rest, coefficient = spec.source_coefficient(q.equation)
            result[q.name] = out(state.value(-rest / coefficient))
        elif q.kind == "grad":
            assert q.field_name is not None
            result[q.name] = out(torch.stack([torch_partial(state.fields[q.field_name], leaf) for leaf in state.leaves], dim=-1))
        elif q.kind == "hessian":
            assert q.field_name is not None
            result[q.name] = out(torch_hessian(state.fields[q.field_name], state.leaves))
    pinn = [q for q in quantities if q.kind in ("pinn_grad", "lambda_hat")]
    if pinn:
        grads = {}
        for term in ("r", "b"):
            model = build_model(problem, state.dtype, device)
            loss_r, loss_b = pinn_losses(problem, device, model)
            (loss_r if term == "r" else loss_b).backward()
            grads[term] = {name: p.grad.detach().cpu().double().numpy(force=True).copy() for name, p in model.named_parameters()}
        result.update(pinn_values(pinn, grads, problem, note))
    for q in quantities:
        result.setdefault(q.name, Skipped(f"torch does not compute {q.kind} quantities"))
    return result
