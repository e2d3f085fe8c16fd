"""`qonnx report --html`: one self-contained page, checked in a real headless browser (Chromium)."""

import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest

from qonnx_bert.benchmarks.html_report import build_html, chart_points

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "glue-minilm-l6"  # committed bench output
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Appended to a copy of the page: once loaded, the browser writes what it rendered into the DOM.
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({w: i.naturalWidth, h: i.naturalHeight, ok: i.complete, alt: i.alt}));
  const tables = [...document.querySelectorAll("table")].map(t => ({rows: t.rows.length, w: t.offsetWidth}));
  const pre = document.createElement("pre"); pre.id = "probe";
  pre.textContent = JSON.stringify({imgs, tables, h1: document.querySelector("h1").textContent});
  document.body.appendChild(pre);
});</script>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(build_html(RESULTS, out), encoding="utf-8")
    return out


def test_page_is_self_contained(page):
    text = page.read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing fetched or linked
    assert text.count("<table>") >= 4  # Table 6, Table 5, size/latency, the chart's legend, the outlier table


def test_chart_points_are_the_bench_means():
    results = json.loads((RESULTS / "results.json").read_text())
    points = {label: (latency, score) for label, latency, score in chart_points(results)}
    assert len(points) == len(results["perf"])
    fp32 = statistics.mean(results["scores"]["fp32"][t] for t in results["tasks"])
    assert points["FP32"] == (pytest.approx(results["perf"]["fp32"]["latency_ms"]), pytest.approx(fp32))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium: apt-get install -y chromium")
def test_chromium_renders_tables_and_images(page, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom"]
    dom = subprocess.run([*cmd, probed.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    seen = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    assert seen["h1"] == "qonnx report: glue-minilm-l6"
    assert len(seen["imgs"]) == 2  # the accuracy-vs-latency chart and the outlier map
    assert all(i["ok"] and i["w"] > 300 and i["h"] > 200 for i in seen["imgs"]), seen["imgs"]  # decoded, not broken
    assert len(seen["tables"]) >= 5 and all(t["rows"] >= 2 and t["w"] > 100 for t in seen["tables"])
