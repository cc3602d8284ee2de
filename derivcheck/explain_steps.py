"""What every ``derivcheck explain`` derivation is made of -- steps, numeric checks, the
rendering as text, Markdown and LaTeX -- and :func:`explain`, which hands a case to its
kind's explainer (see :mod:`derivcheck.case_kinds`). The explainers themselves (networks
and PDEs in :mod:`derivcheck.kinds.network.explain`, score functions in
:mod:`derivcheck.kinds.score.explain`) build on this module; it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from derivcheck.errors import DerivcheckError

MAX_PARAMS = 600
MAX_WIDTH = 32
CHECK_RTOL = 1e-10


class ExplainTooLarge(DerivcheckError, ValueError):
    """The case is too large (or of a kind not covered) to print as a derivation."""


@dataclass
class Check:
    """One numerical check of a step: which engines, whether they agree, the gap."""

    label: str
    ok: bool
    detail: str

    @property
    def mark(self) -> str:
        return "✓" if self.ok else "✗"


@dataclass
class Step:
    """One step: plain-text lines, LaTeX equations and numerical checks."""

    title: str
    text: list[str] = field(default_factory=list)
    latex: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass
class Explanation:
    """A step-by-step derivation (see the module docstring)."""

    name: str
    intro: str
    steps: list[Step]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def failing_steps(self) -> list[str]:
        return [s.title for s in self.steps if not s.ok]

    def to_text(self) -> str:
        out = [f"derivcheck explain: {self.name}", self.intro, ""]
        for number, step in enumerate(self.steps, 1):
            out.append(f"{number}. {step.title}")
            out.extend(f"   {line}" for line in step.text)
            out.extend(f"   [{c.mark}] {c.label}: {c.detail}" for c in step.checks)
            out.append("")
        out.append("all steps check out" if self.ok else "steps that do NOT check out: " + "; ".join(self.failing_steps()))
        return "\n".join(out) + "\n"

    def to_markdown(self) -> str:
        from derivcheck.escaping import markdown

        out = [f"# derivcheck explain: {markdown(self.name)}", "", self.intro, ""]
        for number, step in enumerate(self.steps, 1):
            out += [f"## {number}. {step.title}", ""]
            out += [f"$$ {eq} $$" for eq in step.latex]
            if step.latex:
                out.append("")
            out += [f"- {line}" for line in step.text]
            out += [f"- {c.mark} **{c.label}**: {c.detail}" for c in step.checks]
            out.append("")
        out.append("**All steps check out.**" if self.ok else "**Steps that do not check out:** " + "; ".join(self.failing_steps()))
        return "\n".join(out) + "\n"

    def to_latex(self) -> str:
        from derivcheck.escaping import latex as esc

        out = [r"\documentclass{article}", r"\usepackage{amsmath,amssymb}", r"\begin{document}", rf"\section*{{derivcheck explain: {esc(self.name)}}}", esc(self.intro)]
        for step in self.steps:
            out.append(rf"\subsection*{{{esc(step.title)}}}")
            out += [rf"\[ {eq} \]" for eq in step.latex]
            if step.text or step.checks:
                out.append(r"\begin{itemize}")
                out += [rf"\item {esc(line)}" for line in step.text]
                marks = {True: r"$\checkmark$", False: r"$\times$"}
                out += [rf"\item {marks[c.ok]} {esc(c.label)}: {esc(c.detail)}" for c in step.checks]
                out.append(r"\end{itemize}")
        out.append(r"\end{document}")
        return "\n".join(out) + "\n"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_latex_(self) -> str:
        body = [rf"\text{{{step.title}}}: \quad " + r" \quad ".join(step.latex) for step in self.steps if step.latex]
        return "$$\\begin{gathered}" + r" \\ ".join(body) + "\\end{gathered}$$"


def _grad(tensor: Any) -> np.ndarray:
    """``tensor.grad`` as numpy (the backward pass has run, so it is set)."""
    assert tensor.grad is not None
    return tensor.grad.detach().numpy()


def _compare(label: str, values: dict[str, np.ndarray], scale: float | None = None) -> Check:
    """Max difference relative to `scale` (default: the values' own magnitude; pass the
    size of the terms for a sum that may cancel to zero)."""
    names = list(values)
    arrays = [np.asarray(values[n], dtype=float) for n in names]
    own = max(float(np.max(np.abs(a), initial=0.0)) for a in arrays)
    scale = max(own, scale or 0.0) or 1.0
    worst = 0.0
    for a in arrays[1:]:
        worst = max(worst, float(np.max(np.abs(a - arrays[0]), initial=0.0)) / scale)
    ok = bool(np.isfinite(worst) and worst <= CHECK_RTOL)
    return Check(label, ok, f"{' vs '.join(names)}: max relative difference {worst:.1e}")


def explain(case: Any) -> Explanation:
    """The derivation of a network case or a PDE case (see the module docstring).

    **Raises:** :class:`ExplainTooLarge` with a hint when a network case is too large.
    """
    from derivcheck.case_kinds import kind_of_case

    kind = kind_of_case(case)
    explainer = kind.explainer()
    if explainer is None:
        raise ExplainTooLarge(f"case {case.name!r} is a {kind.name} case, which explain does not print; `derivcheck run` checks it")
    return explainer(case)


def schedule_check(schedule: Any, t: int) -> Check:
    """``abar_t`` from the three independent schedule implementations, compared."""
    from derivcheck.schedules import numpy_schedule, sympy_schedule, torch_schedule

    return _compare(f"abar_{t} from three schedules", {
        "SymPy (40 digits)": np.array([float(sympy_schedule(schedule)[1][t])]),
        "numpy cumprod": numpy_schedule(schedule)[1][t : t + 1],
        "torch cumprod": torch_schedule(schedule)[1][t : t + 1].numpy(),
    })  # fmt: skip
