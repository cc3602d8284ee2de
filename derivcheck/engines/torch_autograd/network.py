"""Torch engine: the real ``torch.nn`` modules and losses, differentiated by autograd.

The network is an ``nn.Sequential`` of each layer's ``torch_module()`` with the case's
parameters loaded through ``load_state_dict`` (names ``"0.weight"``, ...), so the modules
users actually train with are the ones checked. Gradients come from ``loss.backward()``;
the per-sample Jacobian from one ``autograd.grad`` per output; an SGD step from a
real ``torch.optim.SGD``. Runs in the problem's dtype on ``device`` (``"cpu"`` or
``"cuda"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from derivcheck.devices import validate_device
from derivcheck.fields import FieldProblem
from derivcheck.problem import Problem
from derivcheck.quantities import Quantity
from derivcheck.values import EngineResult, EngineValue
from derivcheck.engines.base import Engine


class TorchAutograd(Engine):
    """Autograd on real ``torch.nn`` modules (see the module docstring).

    **Arguments:** `device`: ``"cpu"`` (default) or ``"cuda"``; asking for CUDA without a
    GPU raises :class:`~derivcheck.errors.InvalidArgument` with what was found.
    """

    name = "torch"

    def __init__(self, device: str = "cpu"):
        self.device = validate_device(device)

    def _model(self, problem: Problem) -> Any:
        return problem.network.torch_model(problem.params, problem.dtype, self.device)

    def compute(self, problem: Problem, quantities: Sequence[Quantity]) -> EngineResult:
        if isinstance(problem, FieldProblem):
            from derivcheck.engines.torch_autograd.fields import compute_fields

            return compute_fields(problem, quantities, self.device)
        import torch

        dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        note = f"{self.device}, {problem.dtype}"
        result: EngineResult = {}

        def value(tensor: Any) -> EngineValue:
            return EngineValue(tensor.detach().to("cpu", torch.float64).numpy(force=True).copy(), dtype=problem.dtype, note=note)

        kinds = {q.kind for q in quantities}
        if kinds & {"loss", "param_grad", "input_grad"} and problem.loss is not None:
            model = self._model(problem)
            x = torch.tensor(problem.x, dtype=dtype, device=self.device, requires_grad=True)
            targets = torch.as_tensor(problem.targets, dtype=dtype, device=self.device)
            loss = problem.loss.torch_loss(model(x), targets)
            loss.backward()
            named = dict(model.named_parameters())
            for q in quantities:
                if q.kind == "loss":
                    result[q.name] = value(loss)
                elif q.kind == "param_grad":
                    result[q.name] = value(named[q.param].grad)
                elif q.kind == "input_grad":
                    result[q.name] = value(x.grad)
        for q in quantities:
            if q.kind == "jacobian":
                result[q.name] = value(self._jacobian(problem, dtype))
            elif q.kind == "sgd_step":
                result[q.name] = value(self._sgd_step(problem))
            elif q.kind == "clip_grad":
                result[q.name] = value(self._clipped_gradients(problem))
        return result

    def _jacobian(self, problem: Problem, dtype: Any) -> Any:
        """Per-sample ``dy/dx`` ``(N, out, in)``: one ``autograd.grad`` of ``y[:, i].sum()``
        per output ``i``. Layers act on samples independently, so that gradient's row n is
        ``dy_{n,i}/dx_n``. (``vmap(jacrev)`` is not used: PyTorch has no batching rule for
        the fused LSTM/GRU kernels.)"""
        import torch

        model = self._model(problem)
        x = torch.tensor(problem.x, dtype=dtype, device=self.device, requires_grad=True)
        y = model(x)
        rows = [torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)[0] for i in range(y.shape[1])]
        return torch.stack(rows, dim=1)

    def _clipped_gradients(self, problem: Problem) -> Any:
        """The gradients after a real ``torch.nn.utils.clip_grad_norm_``, concatenated."""
        import torch

        assert problem.loss is not None and problem.clip_max_norm is not None
        dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        model = self._model(problem)
        x = torch.as_tensor(problem.x, dtype=dtype, device=self.device)
        targets = torch.as_tensor(problem.targets, dtype=dtype, device=self.device)
        problem.loss.torch_loss(model(x), targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=problem.clip_max_norm)
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    def _sgd_step(self, problem: Problem) -> Any:
        """``p_after - p_before`` for one real ``torch.optim.SGD`` step, concatenated."""
        import torch

        assert problem.loss is not None and problem.sgd_lr is not None
        dtype = torch.float64 if problem.dtype == "float64" else torch.float32
        model = self._model(problem)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=problem.sgd_lr)
        optimizer.zero_grad()
        x = torch.as_tensor(problem.x, dtype=dtype, device=self.device)
        targets = torch.as_tensor(problem.targets, dtype=dtype, device=self.device)
        problem.loss.torch_loss(model(x), targets).backward()
        optimizer.step()
        return torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])
