"""Nested arguments and results (tuples, lists, dicts) flattened to named leaves and back.

A user's function may take ``f(x, params)`` with ``params`` a dict of arrays, or return
``(loss, aux)`` or ``{"loss": ..., "logits": ...}``. :func:`flatten` lists the leaves with
a path each; :func:`unflatten` rebuilds the structure with new leaves; :func:`path_name`
turns a path into the name messages use (``params['W1']``, ``out[0]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Path = tuple[Any, ...]


def flatten(obj: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[Path, Any]]:
    """``[(path, leaf), ...]`` in a deterministic order (dicts in insertion order)."""
    out: list[tuple[Path, Any]] = []

    def walk(node: Any, path: Path) -> None:
        if is_leaf is not None and is_leaf(node):
            out.append((path, node))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, path + (key,))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, path + (i,))
        else:
            out.append((path, node))

    walk(obj, ())
    return out


def unflatten(obj: Any, replace: dict[Path, Any]) -> Any:
    """A copy of `obj`'s structure with the leaves at the paths in `replace` swapped."""

    def build(node: Any, path: Path) -> Any:
        if path in replace:
            return replace[path]
        if isinstance(node, dict):
            rebuilt = {k: build(v, path + (k,)) for k, v in node.items()}
            return rebuilt if type(node) is dict else type(node)(rebuilt)
        if _is_namedtuple(node):
            return type(node)(*(build(v, path + (i,)) for i, v in enumerate(node)))
        if isinstance(node, (list, tuple)):
            return type(node)(build(v, path + (i,)) for i, v in enumerate(node))
        return node

    return build(obj, ())


def path_name(root: str, path: Path) -> str:
    """``root`` followed by ``[i]`` / ``['key']`` for each step of `path`."""
    return root + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in path)


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")
