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
from contextvars import ContextVar
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


LARGE_PARAMETERS = 1 << 22
"""Parameter entries (over all reachable modules) up to which parameters are copied before a
check; above, only their version counters are recorded (a forward that changes its own
weights in place is rare, and doubling a large model's memory is not)."""


class _Saved:
    """A tensor, a copy of its values (or ``None``: version only) and its version counter."""

    def __init__(self, tensor: Any, copy: bool = True):
        self.tensor = tensor
        try:
            self.version = tensor._version
        except RuntimeError:  # an inference tensor: no version counter, and it cannot be
            copy = False  # changed in place outside inference mode, which a check never enters
            self.version = 0
        self.value = tensor.detach().clone() if copy else None

    def put_back(self) -> None:
        """Copy the saved values back in place if the tensor changed since: its version
        moved, or its values differ (a native kernel -- BatchNorm's running statistics --
        writes without moving the version). An unchanged tensor is not written, so graphs
        the user built through it stay usable; NaN equals NaN here."""
        tensor = self.tensor
        if self.value is None or tensor.shape != self.value.shape or overlaps(tensor):
            return
        if tensor._version == self.version and _same(tensor.detach(), self.value):
            return
        tensor.detach().copy_(self.value)
        self.version = tensor._version


def overlaps(t: Any) -> bool:
    """Whether a tensor has overlapping memory (a stride-0 dimension, from ``expand()``)."""
    return any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape))


def _same(a: Any, b: Any) -> bool:
    """Bit-for-bit equal values, NaN equal to NaN."""
    torch = _torch()
    if a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def _snapshot_able(tensor: Any) -> bool:
    """A tensor whose values can be copied: not an uninitialized lazy parameter, not meta."""
    torch = _torch()
    from torch.nn.parameter import is_lazy

    return isinstance(tensor, torch.Tensor) and not is_lazy(tensor) and tensor.device.type != "meta" and tensor.layout == torch.strided


class _ModuleState:
    """One module's attributes (shallow), its parameter, buffer and submodule tables, and
    its tensors' values (see :class:`_Saved`)."""

    def __init__(self, module: Any, copy_parameters: bool):
        self.module = module
        self.attributes = dict(module.__dict__)
        self.tables = {key: dict(module.__dict__[key]) for key in ("_parameters", "_buffers", "_modules") if key in module.__dict__}
        self.parameters = [_Saved(t, copy_parameters) for t in self.tables.get("_parameters", {}).values() if _snapshot_able(t)]
        self.named_buffers = {name: _Saved(t) for name, t in self.tables.get("_buffers", {}).items() if _snapshot_able(t)}
        self.buffers = list(self.named_buffers.values())
        self.buffers += [_Saved(v) for k, v in self.attributes.items() if k not in ("_parameters", "_buffers") and _snapshot_able(v)]

    def reset_buffers(self) -> None:
        """Fresh copies of the buffers' first values (running statistics, a power
        iteration's vector) in the module's buffer table: the next call starts from the
        state the check found, and updates it in a tensor of its own, not in one an
        earlier call's graph saved for its backward."""
        buffers = self.module.__dict__.get("_buffers")
        if buffers is None:
            return
        for name, saved in self.named_buffers.items():
            if saved.value is not None and name in buffers:
                buffers[name] = saved.value.clone().requires_grad_(saved.tensor.requires_grad)

    def restore(self) -> None:
        torch = _torch()
        module = self.module
        for key, value in list(module.__dict__.items()):  # attributes the forward added or replaced
            if key not in self.attributes:
                del module.__dict__[key]
        module.__dict__.update(self.attributes)
        for key, table in self.tables.items():
            current = module.__dict__[key]
            for name in [n for n in current if n not in table]:
                del current[name]
            for name, value in table.items():
                current[name] = value
        with torch.no_grad():
            for saved in self.parameters + self.buffers:
                saved.put_back()


class Snapshot:
    """What :func:`preserved` puts back (see the module docstring)."""

    def __init__(self, fn: Any, inputs: tuple[Any, ...]):
        torch = _torch()
        modules = {id(sub): sub for root in reachable_modules(fn, inputs) for sub in _submodules(root)}
        size = sum(int(p.numel()) for m in modules.values() for p in m._parameters.values() if _snapshot_able(p))
        self.modules = [_ModuleState(m, copy_parameters=size <= LARGE_PARAMETERS) for m in modules.values()]
        self.inputs: list[Any] = []
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
            if _snapshot_able(value):
                self.inputs.append(_Saved(value))
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._collect_inputs(item)
        elif isinstance(value, dict):
            for item in value.values():
                self._collect_inputs(item)
        elif isinstance(value, np.ndarray) and value.flags.writeable:
            self.inputs.append((value, value.copy()))

    def reset_buffers(self) -> None:
        """Every reachable module's buffers back to their values: run before each call of
        the function, so that a forward that updates state (BatchNorm's statistics, a
        spectral norm's power iteration) is the same function on every call."""
        for state in self.modules:
            state.reset_buffers()

    def restore(self) -> None:
        """Put everything back; a step that fails (an object that refuses) does not stop the
        others."""
        torch = _torch()
        steps: list[Callable[[], Any]] = [state.restore for state in self.modules]
        steps += [functools.partial(_restore_input, saved) for saved in self.inputs]
        steps += [functools.partial(torch.random.set_rng_state, self.torch_rng), self._restore_globals]
        for step in steps:
            try:
                step()
            except Exception:  # noqa: BLE001 - leave that object as it is, restore the rest
                continue

    def _restore_globals(self) -> None:
        torch = _torch()
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)
        torch.set_default_dtype(self.default_dtype)
        torch.set_grad_enabled(self.grad_enabled)


def _restore_input(saved: Any) -> None:
    torch = _torch()
    if isinstance(saved, tuple):  # a numpy array and its copy
        value, copy = saved
        if not np.array_equal(value, copy, equal_nan=value.dtype.kind in "fc"):
            value[...] = copy
        return
    with torch.no_grad():
        saved.put_back()


def _submodules(root: Any) -> list[Any]:
    """`root` and its submodules, except TorchScript modules (their tables are C++ views
    that cannot be rebuilt from Python; their state is left to them)."""
    torch = _torch()
    return [m for m in root.modules() if not isinstance(m, torch.jit.ScriptModule)]


def buffer_resetter(module: Any) -> Callable[[], None]:
    """A function that puts `module`'s (and its submodules') buffers back to their values
    now -- for a copy derivcheck made of the user's module (the float64 twin)."""
    states = [_ModuleState(m, copy_parameters=False) for m in _submodules(module)]

    def reset() -> None:
        for state in states:
            state.reset_buffers()

    return reset


_ACTIVE: ContextVar[Snapshot | None] = ContextVar("derivcheck_snapshot", default=None)


def reset_state() -> None:
    """Reset the buffers of the modules the running check reaches (see
    :meth:`Snapshot.reset_buffers`); nothing outside a check."""
    snapshot = _ACTIVE.get()
    if snapshot is not None:
        snapshot.reset_buffers()


@contextmanager
def preserved(fn: Any, inputs: tuple[Any, ...] = ()) -> Iterator[Snapshot]:
    """Run a check of ``fn(*inputs)`` inside: afterwards the modules it reaches, its input
    tensors and the global RNG and dtype state are as they were before (see the module
    docstring), also when the check raises."""
    snapshot = Snapshot(fn, inputs)
    token = _ACTIVE.set(snapshot)
    try:
        yield snapshot
    finally:
        _ACTIVE.reset(token)
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
