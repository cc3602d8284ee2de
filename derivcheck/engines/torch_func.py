"""The ``torch_func`` engine: torch's functional transforms, a second torch path.

Where the ``torch`` engine nests ``autograd.grad(create_graph=True)`` on batched leaf
tensors (the PINN idiom), this one differentiates a function of a *single point* with
``torch.func.jacrev`` / ``torch.func.hessian`` (nested ``jacrev`` beyond order 2) and maps
it over the points with ``torch.func.vmap``; PINN-loss gradients come from
``torch.func.grad`` over the parameters of a ``functional_call``. It checks field problems
(PDE operators); network losses are the ``torch`` engine's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from derivcheck._lazy import sympy as sp

from derivcheck.devices import validate_device
from derivcheck.evaluate import Evaluator
from derivcheck.fields import FieldProblem, expand_derivatives, field_derivative_key, pinn_values
from derivcheck.values import EngineResult, EngineValue, Skipped
from derivcheck.engines.base import Engine


class _Functional:
    """Point function ``f(p) -> fields (n,)`` and its derivative tensors over all points."""

    def __init__(self, problem: FieldProblem, device: str, params: dict[str, Any] | None = None, model: Any = None):
        import torch

        self.torch = torch
        self.problem = problem
        self.dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        self.device = device
        spec = problem.spec
        if problem.kind == "exact":
            exprs = list(problem.solution_exprs().values())

            def f(point: Any) -> Any:
                env = {s: point[i] for i, s in enumerate(spec.variable_symbols)}
                evaluator = Evaluator("torch", env, {}, None, like=point[0])
                return torch.stack([evaluator(e) for e in exprs])

        else:
            assert model is not None and params is not None

            def f(point: Any) -> Any:
                return torch.func.functional_call(model, params, (point.unsqueeze(0),)).squeeze(0)

        self.f = f
        self.tensors: dict[int, Any] = {}

    def derivative_tensor(self, points: Any, order: int) -> Any:
        """``(P, n, d, ..., d)`` with `order` trailing variable axes."""
        torch = self.torch
        if order not in self.tensors:
            if order == 0:
                fn = self.f
            elif order == 2:
                fn = torch.func.hessian(self.f)
            else:
                fn = self.f
                for _ in range(order):
                    fn = torch.func.jacrev(fn)
            self.tensors[order] = torch.func.vmap(fn)(points)
        return self.tensors[order]

    def evaluate(self, expr: sp.Expr, points: Any) -> Any:
        spec = self.problem.spec
        expanded = expand_derivatives(spec.with_constants(expr))
        field_index = {name: i for i, name in enumerate(spec.fields)}

        def derivative_indexed(node: sp.Derivative) -> Any:
            name, indices = field_derivative_key(node, spec.variable_symbols)
            tensor = self.derivative_tensor(points, len(indices))[:, field_index[name]]
            return tensor[(slice(None),) + tuple(indices)] if indices else tensor

        values = self.derivative_tensor(points, 0)
        env = {s: points[:, i] for i, s in enumerate(spec.variable_symbols)}
        fields = {name: values[:, i] for name, i in field_index.items()}
        return Evaluator("torch", env, fields, derivative_indexed, like=points[:, 0])(expanded)


def _model_and_params(problem: FieldProblem, dtype: Any, device: str) -> tuple[Any, dict[str, Any]]:
    import torch

    assert problem.network is not None and problem.params is not None
    model = problem.network.torch_model(problem.params, dtype, device)
    params = {k: torch.as_tensor(v, dtype=dtype, device=device) for k, v in problem.params.items()}
    return model, params


class TorchFunc(Engine):
    """Field derivatives with ``torch.func`` (see the module docstring)."""

    name = "torch_func"

    def __init__(self, device: str = "cpu"):
        self.device = validate_device(device)

    def compute(self, problem: Any, quantities: Sequence[Any]) -> EngineResult:
        if not isinstance(problem, FieldProblem):
            return {q.name: Skipped("torch_func checks field problems (PDE operators); the torch engine checks networks") for q in quantities}
        import torch

        dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        note = f"{self.device}, {problem.dtype}, vmap(jacrev/hessian)"
        model, params = _model_and_params(problem, dtype, self.device) if problem.kind == "network" else (None, None)
        functional = _Functional(problem, self.device, params, model)
        points = torch.as_tensor(problem.points, dtype=dtype, device=self.device)
        spec = problem.spec
        result: EngineResult = {}

        def out(tensor: Any) -> EngineValue:
            return EngineValue(tensor.detach().to("cpu", torch.float64).numpy(force=True).copy(), dtype=problem.dtype, note=note)

        for q in quantities:
            if q.kind in ("derivative", "operator", "residual"):
                result[q.name] = out(functional.evaluate(q.expr, points))
            elif q.kind == "forcing":
                rest, coefficient = spec.source_coefficient(q.equation)
                result[q.name] = out(functional.evaluate(-rest / coefficient, points))
            elif q.kind in ("grad", "hessian"):
                order = 1 if q.kind == "grad" else 2
                result[q.name] = out(functional.derivative_tensor(points, order)[:, spec.fields.index(q.field_name)])
        pinn = [q for q in quantities if q.kind in ("pinn_grad", "lambda_hat")]
        if pinn:
            assert model is not None and params is not None and problem.boundary is not None
            boundary = torch.as_tensor(problem.boundary, dtype=dtype, device=self.device)
            exact_exprs = problem.solution_exprs()

            def losses(ps: dict[str, Any]) -> tuple[Any, Any]:
                fn = _Functional(problem, self.device, ps, model)
                residual_sq = sum(fn.evaluate(spec.residual_expr(eq), points) ** 2 for eq in spec.equations)
                values = _Functional(problem, self.device, ps, model).derivative_tensor(boundary, 0)
                env = {s: boundary[:, i] for i, s in enumerate(spec.variable_symbols)}
                exact = Evaluator("torch", env, {}, None, like=boundary[:, 0])
                boundary_sq = sum((values[:, spec.fields.index(n)] - exact(e)) ** 2 for n, e in exact_exprs.items())
                return residual_sq.mean(), boundary_sq.mean()

            grads = {
                "r": torch.func.grad(lambda ps: losses(ps)[0])(params),
                "b": torch.func.grad(lambda ps: losses(ps)[1])(params),
            }
            as_np = {t: {k: v.detach().cpu().double().numpy(force=True).copy() for k, v in g.items()} for t, g in grads.items()}
            result.update(pinn_values(pinn, as_np, problem, note))
        for q in quantities:
            result.setdefault(q.name, Skipped(f"torch_func does not compute {q.kind} quantities"))
        return result
