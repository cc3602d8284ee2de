"""The result of checking a user's derivative code, and the assertion error it raises.

A check gathers *evidence* of three kinds, each with its own noise bound:

- comparisons (:class:`~derivcheck.compare.QuantityResult`): the same derivative from your
  code and from references, entry by entry, within the tolerance model;
- Taylor tests (:class:`~derivcheck.check.taylor.TaylorResult`): the remainder's order;
- findings (:class:`Finding`): properties a derivative must have (a zero output gradient
  gives a zero input gradient, batched equals unbatched, gradients have their input's
  dtype, device, shape), and facts worth knowing (a nondeterministic backward).

``ok`` is False only when some evidence shows, beyond its bound, that a derivative is
wrong; kinks, jumps, zero gradients, affine maps and the rounding floor are reported, not
failed. The printed result starts with what failed, by how much, against which bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from derivcheck.compare import QuantityResult
from derivcheck.errors import DerivcheckError
from derivcheck.check.taylor import TaylorResult


@dataclass
class Finding:
    """One property check: `name`, a short `verdict`, whether it is `ok`, a `message`, and
    the `measured` size of a violation against the `bound` it was held to (if any)."""

    name: str
    verdict: str
    ok: bool
    message: str
    measured: float | None = None
    bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "ok": self.ok, "message": self.message, "measured": self.measured, "bound": self.bound}


class DerivativeMismatch(DerivcheckError, AssertionError):
    """Raised by ``assert_torch``/``assert_numpy``/``assert_operator``. The first line
    names the function and the first failing evidence (it is what pytest's short summary
    shows); the rest is the full result. `result` holds the :class:`CheckResult`."""

    def __init__(self, result: CheckResult):
        self.result = result
        failures = result.failures()
        first = f"{result.what}: {failures[0]}" if failures else f"{result.what}: not ok"
        super().__init__(first + "\n" + str(result))


class InconclusiveCheck(DerivcheckError, AssertionError):
    """Raised by ``assert_*`` when nothing is wrong that the evidence could see, but the
    evidence was too weak to prove the derivative right (:attr:`CheckResult.verdict` is
    ``"inconclusive"``). The first line names the function, the quantity and how to get a
    verdict; `result` holds the :class:`CheckResult`."""

    def __init__(self, result: CheckResult):
        self.result = result
        reasons = result.inconclusive()
        first = f"{result.what}: inconclusive: {reasons[0]}" if reasons else f"{result.what}: inconclusive"
        super().__init__(first + "\n" + str(result))


DerivativeMismatch.__module__ = "derivcheck"  # tracebacks and pytest's summary show the public name
InconclusiveCheck.__module__ = "derivcheck"


@dataclass
class CheckResult:
    """Every piece of evidence from one check.

    - `quantities`: one :class:`~derivcheck.compare.QuantityResult` per compared derivative
      (e.g. ``d out/d x``), in the order checked;
    - `mode`: ``"full"`` (whole Jacobians) or ``"directional"`` (random ``u^T J v``);
    - `taylor`: the Taylor test per input (or one along a joint direction);
    - `findings`: property checks (see :class:`Finding`);
    - `tolerances`: what the comparison allowed; `notes`: what was done and why.
    """

    what: str
    quantities: list[QuantityResult]
    mode: str = "full"
    dtype: str = "float64"
    taylor: dict[str, TaylorResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    tolerances: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reference: str = ""
    """What the derivatives were measured against (e.g. "finite differences of your
    forward promoted to float64")."""

    @property
    def verdict(self) -> str:
        """``"mismatch"`` when some evidence shows a derivative wrong beyond its bound;
        else ``"inconclusive"`` when some quantity could not be shown right (see
        :func:`derivcheck.check.evidence.judge`); else ``"ok"``: every derivative was shown
        right, each to the precision its quantity states."""
        if self.failures():
            return "mismatch"
        if any(q.verdict == "inconclusive" for q in self.quantities):
            return "inconclusive"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def __bool__(self) -> bool:  # pragma: no cover - convenience
        return self.ok

    def failures(self) -> list[str]:
        """One line per failing piece of evidence: what, by how much, against which bound."""
        lines = [f"{q.name}: {q.message}" for q in self.quantities if not q.ok and q.verdict != "inconclusive"]
        lines += [t.summary() for t in self.taylor.values() if not t.ok]
        lines += [f"{f.name}: {f.message}" for f in self.findings if not f.ok]
        return lines

    def inconclusive(self) -> list[str]:
        """One line per quantity the evidence could not show right, with how to get a
        verdict."""
        return [f"{q.name}: {q.message}" for q in self.quantities if q.verdict == "inconclusive"]

    def caveats(self) -> list[str]:
        """Quantities shown right only to a coarse precision because the *tested* code's
        own rounding is that large (a float32 gradient of an ill-conditioned function): a
        fact of its dtype, stated so the reader knows what the agreement proves."""
        out = []
        for q in self.quantities:
            if q.ok and q.precision is not None and q.precision > 0.1 and q.limited_by == "tested":
                sharper = "; run it in float64 for a sharper check" if self.dtype != "float64" else ""
                out.append(
                    f"{q.name}: shown right only to {q.precision:.2g} of its size: your {self.dtype} derivative's own rounding noise (measured) is that large here (an ill-conditioned point){sharper}"
                )
        return out

    def finding(self, name: str) -> Finding | None:
        """The finding called `name`, if that check ran."""
        return next((f for f in self.findings if f.name == name), None)

    def __str__(self) -> str:
        failures = self.failures()
        reasons = self.inconclusive()
        verdict = self.verdict
        head = f"derivcheck {verdict.upper()}: {self.what} ({self.mode} check, {self.dtype})"
        lines = [head + (f": {failures[0]}" if failures else f": {reasons[0]}" if verdict == "inconclusive" else "")]
        if failures:
            lines.append("failed:")
            lines.extend(f"  - {line}" for line in failures)
        if reasons:
            lines.append("inconclusive:")
            lines.extend(f"  - {line}" for line in reasons)
        rows = []
        for q in self.quantities:
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
                    f"{q.precision:.1e}" if q.precision is not None else "",
                ]
            )
        if rows:
            lines.append(tabulate(rows, headers=["quantity", "verdict", "odd engine", "worst entry", "values", "error", "bound", "precision"], tablefmt="simple"))
        lines.extend(f"  {c}" for c in self.caveats())
        for q in self.quantities:
            for engine, reason in q.excluded.items():
                lines.append(f"  {q.name}: {engine}: {reason}")
            if q.ok and q.verdict == "kink":
                lines.append(f"  {q.name}: {q.message}")
        for t in self.taylor.values():
            if t.ok:
                lines.append("  " + t.summary())
        for f in self.findings:
            if f.ok:
                lines.append(f"  {f.name}: {f.verdict}: {f.message}")
        if self.tolerances:
            lines.append("  tolerances: " + ", ".join(f"{k}={v:.1e}" for k, v in self.tolerances.items()))
        if self.reference:
            lines.append(f"  reference: {self.reference}; precision: the widest bound relative to the derivative's size (what an OK proves)")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "ok": self.ok,
            "verdict": self.verdict,
            "inconclusive": self.inconclusive(),
            "mode": self.mode,
            "dtype": self.dtype,
            "failures": self.failures(),
            "caveats": self.caveats(),
            "quantities": [q.to_dict() for q in self.quantities],
            "taylor": {k: t.to_dict() for k, t in self.taylor.items()},
            "findings": [f.to_dict() for f in self.findings],
            "tolerances": dict(self.tolerances),
            "notes": list(self.notes),
            "reference": self.reference,
        }
