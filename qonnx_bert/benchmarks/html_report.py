"""``qonnx report DIR --html``: the report as one self-contained HTML page.

The page is the Markdown report (the paper-style tables, outlier maps, per-role SQNR plots
found in DIR) rendered by markdown-it-py, every image inlined as a data URI, plus an
accuracy-vs-latency chart of every scheme whose latency the bench measured (matplotlib):
the trade-off a user chooses from. One file, no external resource, so it opens anywhere
(mailed, attached to a CI run) exactly as written.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from qonnx_bert.benchmarks.glue_bench import mean_score, variant_label
from qonnx_bert.benchmarks.report import TITLE, build_report, read_results
from qonnx_bert.core.errors import UsageError

_INSTALL_HINT = 'pip install "qonnx-bert[plot]"'
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; }
td:not(:first-child) { text-align: right; }
td.name { text-align: left; }
img { max-width: 100%; }
code { background: #f6f6f6; padding: 0 0.2rem; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def chart_points(results: dict) -> list[tuple[str, float, float]]:
    """(label, latency ms, mean score over the tasks) of each variant with a measured latency and every score."""
    tasks, scores = results["tasks"], results["scores"]
    points = []
    for variant, perf in (results.get("perf") or {}).items():
        mean = mean_score([scores.get(variant, {}).get(t) for t in tasks])
        if mean is not None:
            points.append((variant_label(variant), float(perf["latency_ms"]), float(mean)))
    return points


def accuracy_latency_chart(points: list[tuple[str, float, float]], title: str) -> bytes:
    """A PNG scatter of mean score against latency; point i is numbered i + 1 (names in the table below it:
    a dozen PEG variants sit within half a point of each other, so names on the chart would overlap)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"the HTML report's chart needs matplotlib: {_INSTALL_HINT}") from None
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for i, (_, latency, score) in enumerate(points, start=1):
        ax.scatter(latency, score, s=36, color="tab:red" if i == 1 else "tab:blue")
        ax.annotate(str(i), (latency, score), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlabel("latency ms (b=1, T=128, ONNX Runtime CPU provider)")
    ax.set_ylabel("mean dev score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _inline_images(body: str, base: Path) -> str:
    """``<img src="relative.png">`` -> the image's bytes as a data URI (links were made relative to ``base``)."""

    def inline(match: re.Match) -> str:
        path = (base / html.unescape(match.group(1))).resolve()
        return f'src="{_data_uri(path.read_bytes())}"' if path.is_file() else match.group(0)

    return re.sub(r'src="([^"]+\.png)"', inline, body)


def _chart_section(root: Path) -> str:
    if not (root / "results.json").is_file():
        return ""
    results = read_results(root / "results.json")
    points = chart_points(results)
    if not points:
        return ""
    task = results.get("perf_task", results["tasks"][0])
    png = accuracy_latency_chart(points, f"accuracy vs latency (latency of the {task} model)")
    tasks = ", ".join(results["tasks"])
    rows = "".join(
        f'<tr><td>{i}</td><td class="name">{html.escape(label.replace("`", ""))}</td>'
        f"<td>{latency:.2f}</td><td>{score:.2f}</td></tr>\n"
        for i, (label, latency, score) in enumerate(points, start=1)
    )
    return (
        "<h2>Accuracy vs latency</h2>\n"
        f"<p>Mean dev score over {html.escape(tasks)} against CPU latency, for every scheme whose latency "
        "the bench measured (point 1, in red, is the first row below).</p>\n"
        f'<img alt="accuracy vs latency" src="{_data_uri(png)}">\n'
        "<table><thead><tr><th>point</th><th>scheme</th><th>latency ms</th><th>mean score</th></tr></thead>\n"
        f"<tbody>\n{rows}</tbody></table>\n"
    )


def build_html(root: str | Path, output: str | Path) -> str:
    """The self-contained HTML page for the results folder ``root`` (written to ``output`` by the caller)."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        raise UsageError(f"the HTML report needs markdown-it-py: {_INSTALL_HINT}") from None
    root, output = Path(root), Path(output)
    page = MarkdownIt("commonmark").enable("table").render(build_report(root, output))
    body = _inline_images(page, output.resolve().parent)
    head, sep, rest = body.partition("</h1>\n")  # the chart goes first, under the title
    body = head + sep + _chart_section(root) + rest
    title = html.escape(f"{TITLE}{root.resolve().name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
