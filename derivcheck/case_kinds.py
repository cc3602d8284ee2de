"""The registry of case kinds: which case tables a kind owns, and how it loads, runs,
summarises and explains them.

derivcheck checks four kinds of case -- networks, PDE fields, GAN steps, score functions.
Each is a :class:`CaseKind` here: the keys that mark a table as its own, and the
``"module:function"`` names of its loader, runner and explainer. Names, not imports: the
shared layers (case-file reading, running, reports, the CLI) reach every kind through
this table without importing any of them, so no import circle can form (see
``tests/test_layering.py``), and a new kind is its own module plus one :func:`register`
call.

Conventions a kind's functions follow:

- ``load(table, *, file, base_dir, overrides) -> case``: validate one case table (raise
  :class:`~derivcheck.errors.CaseError` naming file, key, value and what is allowed). The
  case has ``name``, ``description``, ``file``, ``engines``, ``device`` and ``summary()``.
- ``run(case, *, device) -> list[CaseResult]``.
- ``explain(case) -> Explanation`` (optional).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CaseKind:
    """One kind of case (see the module docstring)."""

    name: str
    marker_keys: tuple[str, ...]
    """A table with any of these top-level keys is of this kind (checked in registry
    order; a kind with none is the fallback)."""
    load: str
    run: str
    case_type: str
    """``"module:Class"`` of the loaded case, to find a loaded case's kind."""
    explain: str | None = None

    def owns(self, table: Mapping[str, Any]) -> bool:
        return any(key in table for key in self.marker_keys)

    def loader(self) -> Callable[..., Any]:
        return _resolve(self.load)

    def runner(self) -> Callable[..., Any]:
        return _resolve(self.run)

    def explainer(self) -> Callable[..., Any] | None:
        return _resolve(self.explain) if self.explain else None

    def is_case(self, case: Any) -> bool:
        return isinstance(case, _resolve(self.case_type))


def _resolve(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


KINDS: list[CaseKind] = [
    CaseKind(
        "gan",
        ("generator", "discriminator"),
        "derivcheck.kinds.gan.case:load_gan_case",
        "derivcheck.kinds.gan.case:run_gan_case",
        "derivcheck.kinds.gan.case:GanCase",
        "derivcheck.kinds.gan.explain:explain_gan",
    ),
    CaseKind(
        "score",
        ("density",),
        "derivcheck.kinds.score.case:load_score_case",
        "derivcheck.kinds.score.case:run_score_case",
        "derivcheck.kinds.score.case:ScoreCase",
        "derivcheck.kinds.score.explain:explain_score",
    ),
    CaseKind(
        "pde",
        ("pde", "variables"),
        "derivcheck.kinds.pde.case:load_pde_case",
        "derivcheck.kinds.pde.run:run_field_case",
        "derivcheck.kinds.pde.case:FieldCase",
        "derivcheck.kinds.pde.explain:explain_pde",
    ),
    CaseKind(
        "network",
        (),
        "derivcheck.kinds.network.case:load_network_case",
        "derivcheck.kinds.network.run:run_network_case",
        "derivcheck.kinds.network.case:Case",
        "derivcheck.kinds.network.explain:explain_network",
    ),
]
"""Every kind, in the order tables are matched (the fallback, networks, last)."""


def register(kind: CaseKind) -> None:
    """Add `kind` (or replace the kind of the same name), matched before the built-in
    kinds: a kind from a plugin or a test plugs in with this one call."""
    unregister(kind.name)
    KINDS.insert(0, kind)


def unregister(name: str) -> None:
    KINDS[:] = [k for k in KINDS if k.name != name]


def kind_of_table(table: Mapping[str, Any]) -> CaseKind:
    """The kind that owns a case table: the first whose marker keys it has, else the
    fallback kind (one without marker keys)."""
    for kind in KINDS:
        if kind.marker_keys and kind.owns(table):
            return kind
    return next(k for k in KINDS if not k.marker_keys)


def kind_of_case(case: Any) -> CaseKind:
    """The kind of a loaded case."""
    for kind in KINDS:
        if kind.is_case(case):
            return kind
    raise TypeError(f"not a derivcheck case: {type(case).__name__}")


def load_table(table: Mapping[str, Any], *, file: str | None, base_dir: Path | None, overrides: Mapping[str, Any]) -> Any:
    """Validate one case table with its kind's loader."""
    return kind_of_table(table).loader()(table, file=file, base_dir=base_dir, overrides=overrides)


__all__ = ["KINDS", "CaseKind", "kind_of_case", "kind_of_table", "load_table", "register", "unregister"]
