"""A check leaves what it checks as it found it.

Checking a derivative runs the user's code dozens of times: a BatchNorm in training mode
updates its running statistics on every call (``num_batches_tracked`` went to 82 after one
check), a module that stores its output (``self.output = ...``) keeps whatever the last
call -- possibly one under ``torch.func.vmap`` -- left there (a BatchedTensor that raises
on any use afterwards), a backward that draws random numbers advances torch's global RNG.

:func:`preserved` snapshots, before a check, everything such code can change, and puts it
back afterwards, whatever happened in between:

- every ``nn.Module`` the check can reach -- `fn` itself, modules among the inputs, in the
  closure of a function or lambda, in the globals it names, bound to a method or a
  ``functools.partial`` -- and all their submodules: their attributes (anything the
  forward assigned is removed, anything it replaced is put back), their parameters' and
  buffers' values (copied back in place, so references the user holds stay valid),
  ``training`` flags;
- tensors among the inputs (values, in place);
- the global RNG states of torch (CPU, and CUDA where initialised), numpy and Python's
  ``random``, torch's default dtype and grad mode.
"""

from __future__ import annotations

import functools
import inspect
import random
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import numpy as np

SEARCH_DEPTH = 3
"""How many levels of closures, partials and bound objects are searched for modules."""


def _torch() -> Any:
    import torch

    return torch


def reachable_modules(fn: Any, inputs: tuple[Any, ...] = ()) -> list[Any]:
    """The ``nn.Module`` objects the call ``fn(*inputs)`` can reach without searching the
    whole heap: `fn` itself, modules among the inputs (nested in tuples, lists, dicts), in a
    function's closure cells and defaults, in the globals its code names, the object of a
    bound method, a ``functools.partial``'s function and arguments, and the attributes of a
    callable object -- up to :data:`SEARCH_DEPTH` levels deep. Each module once."""
    torch = _torch()
    found: dict[int, Any] = {}
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > SEARCH_DEPTH or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.setdefault(id(obj), obj)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for item in list(obj)[:10_000]:
                visit(item, depth)
            return
        if isinstance(obj, dict):
            for item in list(obj.values())[:10_000]:
                visit(item, depth)
            return
        if isinstance(obj, functools.partial):
            visit(obj.func, depth + 1)
            visit(obj.args, depth + 1)
            visit(obj.keywords, depth + 1)
            return
        if inspect.ismethod(obj):
            visit(obj.__self__, depth + 1)
            visit(obj.__func__, depth + 1)
            return
        if isinstance(obj, types.FunctionType):
            _visit_function(obj, depth, visit)
            return
        wrapped = getattr(obj, "__wrapped__", None)  # functools.wraps, torch.compile's wrapper
        if wrapped is not None and not isinstance(obj, type):
            visit(wrapped, depth + 1)
        if callable(obj) and not isinstance(obj, (type, types.BuiltinFunctionType)) and hasattr(obj, "__dict__"):
            visit(dict(vars(obj)), depth + 1)  # a callable object holding its model

    visit(fn, 0)
    visit(tuple(inputs), 0)
    return list(found.values())


def _visit_function(fn: types.FunctionType, depth: int, visit: Any) -> None:
    for cell in fn.__closure__ or ():
        try:
            visit(cell.cell_contents, depth + 1)
        except ValueError:  # an empty cell
            continue
    visit(fn.__defaults__ or (), depth + 1)
    visit(dict(fn.__kwdefaults__ or {}), depth + 1)
    names = fn.__code__.co_names
    globals_ = fn.__globals__
    for name in names:
        if name in globals_:
            value = globals_[name]
            if not isinstance(value, types.ModuleType):
                visit(value, depth + 1)


class _ModuleState:
    """One module's attributes (shallow), its parameter, buffer and submodule tables, and
    copies of its tensors' values."""

    def __init__(self, module: Any):
        torch = _torch()
        self.module = module
        self.attributes = dict(module.__dict__)
        self.tables = {key: dict(module.__dict__[key]) for key in ("_parameters", "_buffers", "_modules") if key in module.__dict__}
        self.values: list[tuple[Any, Any]] = []
        for table in ("_parameters", "_buffers"):
            for tensor in self.tables.get(table, {}).values():
                if isinstance(tensor, torch.Tensor):
                    self.values.append((tensor, tensor.detach().clone()))
        for key, value in self.attributes.items():
            if isinstance(value, torch.Tensor) and key not in ("_parameters", "_buffers"):
                self.values.append((value, value.detach().clone()))

    def restore(self) -> None:
        torch = _torch()
        module = self.module
        module.__dict__.clear()
        module.__dict__.update(self.attributes)
        for key, table in self.tables.items():
            current = module.__dict__[key]
            current.clear()
            current.update(table)
        with torch.no_grad():
            for tensor, saved in self.values:
                _put_back(tensor, saved)


def _put_back(tensor: Any, saved: Any) -> None:
    """Copy `saved` into `tensor` in place, only where it changed (an unchanged tensor
    keeps its version counter, so graphs the user built through it stay usable)."""
    torch = _torch()
    try:
        same = tensor.shape == saved.shape and tensor.dtype == saved.dtype and bool(torch.equal(tensor.detach(), saved))
    except Exception:  # noqa: BLE001 - a tensor that cannot be compared (a subclass, meta): leave it
        return
    if not same and tensor.shape == saved.shape:
        tensor.detach().copy_(saved)


class Snapshot:
    """What :func:`preserved` puts back (see the module docstring)."""

    def __init__(self, fn: Any, inputs: tuple[Any, ...]):
        torch = _torch()
        self.modules = [_ModuleState(sub) for root in reachable_modules(fn, inputs) for sub in root.modules()]
        self.inputs: list[tuple[Any, Any]] = []
        self._collect_inputs(inputs)
        self.torch_rng = torch.random.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()
        self.default_dtype = torch.get_default_dtype()
        self.grad_enabled = torch.is_grad_enabled()

    def _collect_inputs(self, value: Any) -> None:
        torch = _torch()
        if isinstance(value, torch.Tensor):
            if value.layout == torch.strided and value.device.type != "meta":
                self.inputs.append((value, value.detach().clone()))
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._collect_inputs(item)
        elif isinstance(value, dict):
            for item in value.values():
                self._collect_inputs(item)
        elif isinstance(value, np.ndarray) and value.flags.writeable:
            self.inputs.append((value, value.copy()))

    def restore(self) -> None:
        torch = _torch()
        for state in self.modules:
            state.restore()
        with torch.no_grad():
            for value, saved in self.inputs:
                if isinstance(value, np.ndarray):
                    if not np.array_equal(value, saved, equal_nan=value.dtype.kind in "fc"):
                        value[...] = saved
                else:
                    _put_back(value, saved)
        torch.random.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)


@contextmanager
def preserved(fn: Any, inputs: tuple[Any, ...] = ()) -> Iterator[Snapshot]:
    """Run a check of ``fn(*inputs)`` inside: afterwards the modules it reaches, its input
    tensors and the global RNG and dtype state are as they were before (see the module
    docstring), also when the check raises."""
    snapshot = Snapshot(fn, inputs)
    try:
        yield snapshot
    finally:
        snapshot.restore()


P = ParamSpec("P")
R = TypeVar("R")


def leaves_state_unchanged(check: Callable[P, R]) -> Callable[P, R]:
    """Decorate a ``check_*`` function: its call runs inside :func:`preserved`, over
    everything passed to it (the function under test, its inputs, ``model=``)."""

    @functools.wraps(check)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with preserved(args[:1], args[1:] + tuple(kwargs.values())):
            return check(*args, **kwargs)

    return wrapper
