"""derivcheck report: golden Markdown/JSON, self-contained HTML (in a real browser when one
is installed), plots, the missing-matplotlib message, atomic writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from derivcheck import cli, load_case, outputs
from derivcheck.report import json_report, plots, writer
from derivcheck.report.markdown import render_markdown
from derivcheck.runner import run_any

GOLDEN = Path(__file__).parent / "golden"
ENV = {"derivcheck": "X", "python": "X", "sympy": "X", "numpy": "X", "torch": "X", "matplotlib": "X", "device": ["cpu"], "dtype": ["float64"], "seed": ["7"]}
UPDATE = os.environ.get("DERIVCHECK_UPDATE_GOLDEN") == "1"


def _normalize(value):
    """Floats to 3 significant digits, rounding-level values (< 1e-9) to 0: the golden file
    pins structure, verdicts and meaningful numbers, not the last bits of rounding."""
    if isinstance(value, float):
        return 0.0 if abs(value) < 1e-9 else float(f"{value:.3g}")
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items() if k not in ("derivcheck_version", "file", "notes")}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with DERIVCHECK_UPDATE_GOLDEN=1 if intended"


@pytest.fixture(scope="module")
def tiny_results():
    return run_any(load_case(GOLDEN / "tiny.toml"))


def test_markdown_golden(tiny_results):
    markdown = render_markdown(tiny_results, ENV)
    assert "| tiny | dL/d0.weight | 4 | ✅ agree |" in markdown
    normalized = "\n".join(_scrub(line) for line in markdown.splitlines()) + "\n"
    _golden("tiny.md", normalized)


def _scrub(line: str) -> str:
    """Rounding-level errors (< 1e-9) to 0, long numbers to 8 significant digits: the
    golden file pins the content, not the last bits of a given numpy/BLAS."""
    import re

    line = re.sub(r"\d\.\d+e[-+]\d\d", lambda m: "0" if abs(float(m.group())) < 1e-9 else f"{float(m.group()):.1e}", line)
    return re.sub(r"-?\d+\.\d{9,}", lambda m: f"{float(m.group()):.8g}", line)


def test_json_golden_and_deterministic(tiny_results):
    document = json_report.run_to_dict(tiny_results)
    _golden("tiny.json", json.dumps(_normalize(document), indent=2, sort_keys=True) + "\n")
    again = json_report.run_to_dict(run_any(load_case(GOLDEN / "tiny.toml")))
    assert json.dumps(again) == json.dumps(document)  # same seed, same bytes
    assert document["schema_version"] == 1


def test_report_command_writes_everything(tmp_path):
    out = tmp_path / "reports"
    assert cli.main(["report", str(GOLDEN / "tiny.toml"), str(Path(__file__).parent.parent / "cases" / "pde" / "heat-1d.toml"), "-o", str(out)]) == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"index.html", "report.md", "report.json"} <= set(names)
    pngs = [n for n in names if n.endswith(".png")]
    assert any("step-study" in n for n in pngs) and any("residual-map" in n for n in pngs)
    page = (out / "index.html").read_text()
    assert '<table id="summary">' in page and "data:image/png;base64," in page
    assert "plots/margins-error-tolerance-of-every-quantity.png" in names and "How close" not in page  # the plot is a PNG
    assert 'alt="margins: error / tolerance of every quantity"' in page
    assert "http://" not in page and "https://" not in page  # self-contained
    doc = json.loads((out / "report.json").read_text())
    assert doc["environment"]["torch"] and doc["summary"]["cases"] == 3
    assert oct((out / "report.md").stat().st_mode & 0o777) != oct(0o600)


def test_html_overview_links_to_sections_with_valid_ids(tiny_results):
    import re

    from derivcheck.report.html import case_ids, render_html

    results = list(tiny_results) * 2  # two cases of the same name get distinct ids
    page = render_html(results, ENV)
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == case_ids(results) == ["case-tiny", "case-tiny-2"]
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", i) for i in ids)
    assert re.findall(r'<a href="#([^"]+)">tiny</a>', page) == ids
    assert "<details><summary>" in page and "worst margin" in page
    assert page.index('id="summary"') < page.index("<section")
    from derivcheck.runner import CaseResult

    assert case_ids([CaseResult(name="helmholtz-mms [exact]", quantities=[], engines=[]), CaseResult(name="!!", quantities=[], engines=[])]) == ["case-helmholtz-mms-exact", "case-unnamed"]


def test_missing_matplotlib_is_said(tmp_path, monkeypatch, tiny_results):
    monkeypatch.setattr(plots, "available", lambda: False)
    files = writer.render_report(tiny_results)
    assert "pip install 'derivcheck[plots]'" in files["report.md"]
    assert "pip install &#x27;derivcheck[plots]&#x27;" in files["index.html"]
    assert not any(name.startswith("plots/") for name in files)


def test_interrupted_report_leaves_previous_files_intact(tmp_path, monkeypatch, tiny_results):
    writer.write_report(tiny_results, tmp_path, with_plots=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}

    real_replace = os.replace
    calls = {"n": 0}

    def interrupted(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user presses Ctrl-C in the middle of writing
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", interrupted)
    changed = [r for r in tiny_results]
    changed[0].description = "changed description"
    with pytest.raises(KeyboardInterrupt):
        writer.write_report(changed, tmp_path, with_plots=False)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert set(after) == set(before)  # no temporary files left behind
    for name, content in after.items():
        assert content == before[name] or b"changed description" in content  # old or whole new, never half
    for name in after:
        if name.endswith(".json"):
            json.loads(after[name])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian package 'chromium')")
def test_html_renders_in_a_real_browser(tmp_path):
    cli.main(["report", str(Path(__file__).parent.parent / "cases" / "pde" / "helmholtz-mms.toml"), "-o", str(tmp_path)])
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", (tmp_path / "index.html").as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    assert 'id="summary"' in dom and "helmholtz-mms [exact]" in dom
    # every overview link lands on its case's section, and agreeing quantities start collapsed
    links = tmp_path / "links.html"
    links.write_text(
        (tmp_path / "index.html")
        .read_text()
        .replace(
            "</body>",
            "<script>const a=[...document.querySelectorAll('#summary a')];"
            "document.title=a.length+':'+a.filter(l=>document.querySelector(new URL(l.href).hash)?.tagName==='SECTION').length"
            "+':'+[...document.querySelectorAll('details')].filter(d=>!d.open).length</script></body>",
        )
    )
    probe_links = subprocess.run([CHROMIUM, *flags, "--dump-dom", links.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    total, landed, collapsed = (int(n) for n in probe_links.split("<title>")[1].split("</title>")[0].split(":"))
    assert total == 2 and landed == 2 and collapsed >= 2
    # the browser decoded the embedded plots: ask it for the images' natural widths
    script = tmp_path / "probe.html"
    script.write_text(
        (tmp_path / "index.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.onload=()=>{document.title=[...document.images].map(i=>i.naturalWidth).join(',')}</script></body>",
        )
    )
    probe = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", script.as_uri()], capture_output=True, text=True, timeout=120, check=False).stdout
    title = probe.split("<title>")[1].split("</title>")[0]
    widths = [int(w) for w in title.split(",") if w]
    assert widths and all(w > 100 for w in widths)


def test_markdown_golden_with_a_disagreement(monkeypatch):
    from derivcheck.layers.activations import Tanh

    monkeypatch.setattr(Tanh, "numpy_backward", lambda self, g, cache, params: (g * (1 - cache), {}))
    results = run_any(load_case(GOLDEN / "tiny.toml"))
    markdown = render_markdown(results, ENV)
    assert markdown.index("### dL/d0.weight: disagree") < markdown.index("quantities agree")  # disagreements first
    assert "numpy disagrees with symbolic, finite_diff, torch" in markdown
    _golden("tiny-disagree.md", "\n".join(_scrub(line) for line in markdown.splitlines()) + "\n")
