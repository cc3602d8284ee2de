"""The result of checking a user's derivative code, and the assertion error it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from .compare import QuantityResult
from .errors import DerivcheckError
from .user_fd import TaylorResult


class DerivativeMismatch(DerivcheckError, AssertionError):
    """Raised by ``assert_torch``/``assert_numpy``/``assert_operator``; the message is the
    agreement table with the worst entries first. `result` holds the :class:`CheckResult`."""

    def __init__(self, result: "CheckResult"):
        self.result = result
        super().__init__("\n" + str(result))


@dataclass
class CheckResult:
    """Verdicts on every quantity of one check.

    - `quantities`: one :class:`~derivcheck.compare.QuantityResult` per derivative
      (e.g. ``d out/d inputs[0]``), listed worst first.
    - `mode`: ``"full"`` (whole Jacobians) or ``"directional"`` (random ``u^T J v``).
    - `taylor`: the Taylor test per input, when run.
    - `tolerances`: what the comparison allowed, per dtype.
    """

    what: str
    quantities: list[QuantityResult]
    mode: str = "full"
    dtype: str = "float64"
    taylor: dict[str, TaylorResult] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(q.ok for q in self.quantities) and all(t.ok for t in self.taylor.values())

    def __bool__(self) -> bool:  # pragma: no cover - convenience
        return self.ok

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        lines = [f"derivcheck {verdict}: {self.what} ({self.mode} check, {self.dtype})"]
        order = sorted(self.quantities, key=lambda q: (q.ok, -q.max_rel_error))
        rows = []
        for q in order:
            worst = q.worst
            rows.append(
                [
                    q.name,
                    q.verdict,
                    q.odd_engine or "",
                    worst.label if worst else "",
                    ", ".join(f"{e}={v:.6g}" for e, v in worst.values.items()) if worst else "",
                    f"{worst.error:.2e}" if worst else "",
                    f"{worst.tolerance:.2e}" if worst else "",
                ]
            )
        lines.append(tabulate(rows, headers=["quantity", "verdict", "odd engine", "worst entry", "values", "error", "tolerance"], tablefmt="simple"))
        for q in order:
            if not q.ok:
                lines.append(f"  {q.name}: {q.message}")
            for engine, reason in q.excluded.items():
                lines.append(f"  {q.name}: {engine}: {reason}")
        for name, t in self.taylor.items():
            shown = ", ".join("-" if o != o else f"{o:.2f}" for o in t.orders)
            lines.append(f"  Taylor test {name}: order {t.order:.2f} ({'ok' if t.ok else 'WRONG GRADIENT: expected 2'}); per step: {shown}")
        if self.tolerances:
            lines.append("  tolerances: " + ", ".join(f"{k}={v:.1e}" for k, v in self.tolerances.items()))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "ok": self.ok,
            "mode": self.mode,
            "dtype": self.dtype,
            "quantities": [q.to_dict() for q in self.quantities],
            "taylor": {k: t.to_dict() for k, t in self.taylor.items()},
            "tolerances": dict(self.tolerances),
            "notes": list(self.notes),
        }
