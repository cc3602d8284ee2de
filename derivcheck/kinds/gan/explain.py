"""``derivcheck explain`` for a GAN case."""

from __future__ import annotations

from typing import Any

from derivcheck.explain_steps import Explanation, ExplainTooLarge


def explain_gan(case: Any) -> Explanation:
    """GAN steps are checked by ``derivcheck run``, not printed (yet)."""
    raise ExplainTooLarge(f"case {case.name!r} is a GAN step: explain covers single networks; `derivcheck run` checks it")
