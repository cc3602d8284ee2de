"""Shared fixtures and Hypothesis profiles.

Profiles: ``ci`` (derandomized, no deadline, no example database -- selected automatically
when the ``CI`` environment variable is set) and ``dev`` (random, no deadline). Select one
explicitly with ``pytest --hypothesis-profile=ci``.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

from helpers import CASES

settings.register_profile("ci", derandomize=True, deadline=None, database=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# a compile cache of this test session only (subprocesses inherit it), never the user's
os.environ["DERIVCHECK_CACHE_DIR"] = tempfile.mkdtemp(prefix="derivcheck-test-cache-")


@pytest.fixture
def cases_dir():
    return CASES
