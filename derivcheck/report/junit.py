"""JUnit XML for CI systems: one ``<testcase>`` per case (per field kind for PDE cases).

Each test case carries ``<properties>``: ``verdict`` and ``max_rel_error`` (the largest
relative error between engines over its quantities); a disagreement or NaN is a
``<failure>`` with the explanation, an engine crash an ``<error>``. Written atomically.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from derivcheck.runner import CaseResult
from derivcheck.escaping import xml as _x
from derivcheck.outputs import write_atomic
from derivcheck.report.table import details


def max_rel_error(result: CaseResult) -> float:
    return max((q.max_rel_error for q in result.quantities), default=0.0)


def junit_xml(results: Sequence[CaseResult], suite: str = "derivcheck") -> str:
    """The JUnit XML document for `results`."""
    failures = sum(1 for r in results if not r.ok and not r.crashed)
    errors = sum(1 for r in results if r.crashed)
    skipped = sum(1 for r in results if r.skipped)
    root = ET.Element("testsuites")
    node = ET.SubElement(root, "testsuite", name=_x(suite), tests=str(len(results)), failures=str(failures), errors=str(errors), skipped=str(skipped))
    for result in results:
        classname = Path(result.file).stem if result.file else "derivcheck"
        case = ET.SubElement(node, "testcase", classname=_x(f"derivcheck.{classname}"), name=_x(result.name), time=f"{sum(result.timings.values()):.3f}")
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="verdict", value=result.verdict)
        ET.SubElement(props, "property", name="max_rel_error", value=f"{max_rel_error(result):.3e}")
        ET.SubElement(props, "property", name="quantities", value=str(len(result.quantities)))
        if result.skipped:
            ET.SubElement(case, "skipped", message=_x(result.skipped))
        elif result.crashed:
            error = ET.SubElement(case, "error", message=_x("; ".join(result.errors)))
            error.text = _x(details([result]))
        elif not result.ok:
            bad = [q for q in result.quantities if not q.ok]
            failure = ET.SubElement(case, "failure", message=_x(f"{result.verdict}: " + "; ".join(f"{q.name}: {q.message}" for q in bad[:3])))
            failure.text = _x(details([result]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: str | Path, results: Sequence[CaseResult]) -> None:
    """Write JUnit XML to `path` atomically."""
    write_atomic(path, junit_xml(results))
