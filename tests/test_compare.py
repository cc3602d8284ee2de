"""The comparison: tolerances, verdicts, the odd engine out, kinks and NaN/Inf."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from derivcheck.compare import Tolerance, compare_quantity
from derivcheck.values import EngineValue


def ev(values, **kw):
    return EngineValue(np.asarray(values, dtype=float), **kw)


def test_exact_engines_agree_within_rounding():
    base = np.array([1.0, -2.0, 3e-3])
    r = compare_quantity("q", {"a": ev(base), "b": ev(base * (1 + 1e-15)), "c": ev(base)})
    assert r.verdict == "agree" and r.ok
    assert r.odd_engine is None
    assert r.max_rel_error < 1e-14
    assert r.max_rel_error_exact == r.max_rel_error and r.max_rel_error_approx is None


def test_odd_engine_is_named_with_worst_entry():
    base = np.arange(1.0, 7.0).reshape(2, 3)
    bad = base.copy()
    bad[1, 2] *= 1.01
    r = compare_quantity("dL/dW", {"symbolic": ev(base), "numpy": ev(bad), "torch": ev(base)}, label=lambda i: f"W{list(i)}")
    assert r.verdict == "disagree" and not r.ok
    assert r.odd_engine == "numpy"
    assert r.worst.index == (1, 2) and r.worst.label == "W[1, 2]"
    assert r.worst.values["numpy"] == pytest.approx(6.06) and r.worst.values["symbolic"] == 6.0
    assert "numpy disagrees with symbolic, torch" in r.message
    assert r.worst.error > r.worst.tolerance
    matrix = r.agreement_matrix()
    assert matrix["symbolic"]["torch"] and not matrix["numpy"]["torch"]


def test_two_engines_cannot_name_a_culprit():
    r = compare_quantity("q", {"a": ev([1.0]), "b": ev([2.0])})
    assert r.verdict == "disagree" and r.odd_engine is None
    assert "two engines cannot tell" in r.message


def test_two_against_two_has_no_odd_engine():
    r = compare_quantity("q", {"a": ev([1.0]), "b": ev([1.0]), "c": ev([2.0]), "d": ev([2.0])})
    assert r.verdict == "disagree" and r.odd_engine is None
    assert "no single engine" in r.message


def test_fewer_than_two_engines_is_skipped_with_the_reason_or_an_error_without_one():
    r = compare_quantity("q", {"a": ev([1.0])}, skipped={"b": "not supported"})
    assert r.verdict == "skipped" and r.skipped == {"b": "not supported"} and r.ok
    assert "only a computes this quantity (b: not supported)" in r.message
    r = compare_quantity("q", {"a": ev([1.0])})
    assert r.verdict == "error" and not r.ok


def test_float32_tolerance_is_looser():
    base = np.array([1.0, 2.0])
    noisy = base * (1 + 1e-6)
    assert compare_quantity("q", {"a": ev(base), "b": ev(noisy)}).verdict == "disagree"
    assert compare_quantity("q", {"a": ev(base), "b": ev(noisy, dtype="float32")}).verdict == "agree"
    r = compare_quantity("q", {"a": ev(base), "b": ev(base * 1.01, dtype="float32")})
    assert r.verdict == "disagree"


def test_error_estimate_widens_tolerance_for_that_engine_only():
    base = np.array([1.0, 2.0])
    fd = ev(base + 1e-9, error_estimate=np.full(2, 1e-9))
    assert compare_quantity("q", {"exact": ev(base), "fd": fd}).verdict == "agree"
    fd_bad = ev(base + 1e-6, error_estimate=np.full(2, 1e-9))
    assert compare_quantity("q", {"exact": ev(base), "fd": fd_bad}).verdict == "disagree"


def test_small_entries_judged_against_quantity_scale():
    # an entry 1e-17 next to entries of size 1: rounding noise, not a disagreement
    a = np.array([1.0, 0.0])
    b = np.array([1.0, 1e-17])
    assert compare_quantity("q", {"a": ev(a), "b": ev(b)}).verdict == "agree"
    # ... but the same absolute noise on a quantity of size 1e-16 is a relative error of 10%
    assert compare_quantity("q", {"a": ev(a * 1e-16), "b": ev(b * 1e-16 + [0, 1e-17])}).verdict == "disagree"


def test_nonfinite_is_its_own_verdict_with_location():
    r = compare_quantity("q", {"a": ev([1.0, np.nan]), "b": ev([1.0, 1.0]), "c": ev([1.0, 1.0])}, label=lambda i: f"x{list(i)}")
    assert r.verdict == "nonfinite"
    assert "a: NaN at x[1]" in r.message
    r = compare_quantity("q", {"a": ev([np.inf]), "b": ev([1.0])})
    assert r.verdict == "nonfinite" and "Inf" in r.message


def test_kink_entries_are_not_compared():
    a, b = np.array([1.0, 0.0]), np.array([1.0, 0.5])
    r = compare_quantity("q", {"a": ev(a), "b": ev(b)}, kink_mask=np.array([False, True]))
    assert r.verdict == "kink" and r.kinks == 1
    # a disagreement elsewhere still wins over the kink
    r = compare_quantity("q", {"a": ev([2.0, 0.0]), "b": ev([1.0, 0.5])}, kink_mask=np.array([False, True]))
    assert r.verdict == "disagree"


def test_excluded_entries_of_one_engine():
    exact = np.array([1.0, 2.0])
    fd = ev([1.0, 99.0], error_estimate=np.zeros(2), excluded=np.array([False, True]), excluded_reason="the finite-difference step crossed a kink")
    r = compare_quantity("q", {"a": ev(exact), "b": ev(exact), "fd": fd})
    assert r.verdict == "agree"
    assert "crossed a kink" in r.excluded["fd"]


def test_shape_mismatch_is_a_bug_report():
    with pytest.raises(ValueError, match="shape"):
        compare_quantity("q", {"a": ev([1.0]), "b": ev([1.0, 2.0])})


def test_to_dict_is_strict_json():
    r = compare_quantity("q", {"a": ev([np.nan]), "b": ev([1.0])})
    text = json.dumps(r.to_dict(), allow_nan=False)
    assert '"verdict": "nonfinite"' in text


def test_rtol_override():
    tol = Tolerance(rtol=1e-3)
    assert compare_quantity("q", {"a": ev([1.0]), "b": ev([1.0005])}, tolerance=tol).verdict == "agree"


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=4), elements=st.floats(-1e6, 1e6)))
def test_identical_values_always_agree(values):
    r = compare_quantity("q", {"a": ev(values), "b": ev(values.copy()), "c": ev(values.copy())})
    assert r.verdict == "agree" and r.max_rel_error == 0


@given(
    hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(0.5, 10)),
    st.floats(1e-9, 1.0),
    st.data(),
)
def test_any_relative_perturbation_above_1e9_is_caught(values, rel, data):
    index = data.draw(st.integers(0, values.size - 1))
    bad = values.copy()
    bad[index] *= 1 + rel
    r = compare_quantity("q", {"x": ev(values), "y": ev(bad), "z": ev(values)})
    assert r.verdict == "disagree" and r.odd_engine == "y" and r.worst.index == (index,)
