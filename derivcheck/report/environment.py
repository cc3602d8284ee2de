"""The environment a run happened in: versions, device, dtype, seed (no timestamps, so the
same seed gives the same report)."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from derivcheck.runner import CaseResult


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Versions of derivcheck, Python, sympy, numpy, torch (and matplotlib), with the
    devices, dtypes and seeds the cases ran with."""
    from derivcheck._version import __version__

    def collect(key: str) -> list[Any]:
        return sorted({str(r.meta.get(key)) for r in results if r.meta.get(key) is not None})

    return {
        "derivcheck": __version__,
        "python": platform.python_version(),
        "sympy": _version("sympy"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "matplotlib": _version("matplotlib"),
        "device": collect("device"),
        "dtype": collect("dtype"),
        "seed": collect("seed"),
    }
