"""One Markdown page from a results directory: bench tables, debug/outlier tables and plots.

Reads ``results.json`` (rendered afresh by ``benchmark.render_results``) or, failing
that, ``results.md``; then every other Markdown file and PNG below the directory.
A PNG and a Markdown file with the same stem (what ``qonnx debug --plot`` and
``qonnx outliers -o`` write) become one section. Image links are relative to the
report, so the page renders wherever the directory is copied.
"""

from __future__ import annotations

import os
from pathlib import Path

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import read_json_object, require

RESULTS_FILES = ("results.json", "results.md")


def _bench_section(root: Path) -> str | None:
    from qonnx_bert.benchmarks.glue_bench import render_results

    if (root / "results.json").is_file():
        results = _read_results(root / "results.json")
        if "tasks" in results:
            return render_results(results)
    if (root / "results.md").is_file():
        return (root / "results.md").read_text().strip()
    return None


def _read_results(path: Path) -> dict:
    """A bench ``results.json``, its tables' keys checked (a hand-edited file is one line, not a traceback)."""
    results = read_json_object(path, "bench results file", "re-run `qonnx bench` to write it")
    if "tasks" in results:
        where = str(path)
        tasks = require(results, "tasks", list, where)
        for variant, row in require(results, "scores", dict, where).items():
            row = require({variant: row}, variant, dict, f"{where}: scores")
            for task in tasks:
                if row.get(task) is not None:
                    require(row, task, (int, float), f"{where}: scores of {variant}")
    return results


def _shift_headings(text: str) -> str:
    """Nest a page's headings one level under the report's section heading."""
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def build_report(root: str | Path, output: str | Path) -> str:
    """The Markdown page for ``root``; links are relative to ``output``'s directory."""
    root, output = Path(root), Path(output)
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a directory; pass the -o directory of `qonnx bench` (or any folder of results)"
        )
    here = output.resolve().parent
    parts = [f"# qonnx report: {root.resolve().name}"]
    bench = _bench_section(root)
    if bench:
        parts += ["## Benchmark", _shift_headings(bench)]
    skip = {(root / f).resolve() for f in RESULTS_FILES} | {output.resolve()}
    pages = sorted(p for p in root.rglob("*.md") if p.resolve() not in skip)
    images = sorted(root.rglob("*.png"))
    for stem in sorted({p.with_suffix("") for p in [*pages, *images]}):
        title = os.path.relpath(stem, root)
        parts.append(f"## {title}")
        if stem.with_suffix(".png") in images:
            parts.append(f"![{title}]({os.path.relpath(stem.with_suffix('.png').resolve(), here)})")
        if stem.with_suffix(".md") in pages:
            parts.append(_shift_headings(stem.with_suffix(".md").read_text().strip()))
    if len(parts) == 1:
        raise UsageError(f"{root} holds no results.json/results.md, Markdown tables or PNG plots")
    return "\n\n".join(parts) + "\n"
