"""One Markdown page from a results directory: bench tables, debug/outlier tables and plots.

Reads ``results.json`` (rendered afresh by ``benchmark.render_results``) or, failing
that, ``results.md``; then every other Markdown file and PNG below the directory.
A PNG and a Markdown file with the same stem (what ``qonnx debug --plot`` and
``qonnx outliers -o`` write) become one section. Image links are relative to the
report, so the page renders wherever the directory is copied.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import read_json_object, require

RESULTS_FILES = ("results.json", "results.md")
TITLE = "qonnx report: "  # the first line of every page: how an earlier report is told from the results


def _bench_section(root: Path) -> str | None:
    from qonnx_bert.benchmarks.glue_bench import render_results

    if (root / "results.json").is_file():
        return render_results(read_results(root / "results.json"))
    if (root / "results.md").is_file():
        return read_page(root / "results.md", root).strip()
    return None


def read_results(path: Path) -> dict:
    """A bench ``results.json``, its tables' keys checked (a hand-edited file is one line, not a traceback).

    A file without tasks (``{}``) is refused rather than passed over for ``results.md``, which
    may be older; a score that is not finite is refused naming its cell (bench writes none).
    """
    hint = "re-run `qonnx bench` to write it"
    results = read_json_object(path, "bench results file", hint)
    where = str(path)
    if not results.get("tasks"):
        raise UsageError(f"{path} holds no bench results (no tasks); {hint}")
    tasks = require(results, "tasks", list, where)
    for variant, row in require(results, "scores", dict, where).items():
        row = require({variant: row}, variant, dict, f"{where}: scores")
        for task in tasks:
            if row.get(task) is not None:
                value = require(row, task, (int, float), f"{where}: scores of {variant}")
                if not math.isfinite(value):
                    raise UsageError(f"{where}: the {variant} score of {task} is {value}, not a score; {hint}")
    return results


def is_report_page(path: Path) -> bool:
    """Whether ``path`` is a page this report wrote (Markdown or HTML): the one file of a results folder it replaces."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(f"# {TITLE}".encode()) or f"<title>{TITLE}".encode() in head


def read_page(path: Path, root: Path) -> str:
    """A Markdown file of the results folder; one that is not UTF-8 is one line naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; convert it (iconv -t UTF-8) or move it out of {root}") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None


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
    parts = [f"# {TITLE}{root.resolve().name}"]
    bench = _bench_section(root)
    if bench:
        parts += ["## Benchmark", _shift_headings(bench)]
    skip = {(root / f).resolve() for f in RESULTS_FILES} | {output.resolve()}
    pages = sorted(p for p in root.rglob("*.md") if p.resolve() not in skip and not is_report_page(p))
    images = sorted(root.rglob("*.png"))
    for stem in sorted({p.with_suffix("") for p in [*pages, *images]}):
        title = os.path.relpath(stem, root)
        parts.append(f"## {title}")
        if stem.with_suffix(".png") in images:
            parts.append(f"![{title}]({os.path.relpath(stem.with_suffix('.png').resolve(), here)})")
        if stem.with_suffix(".md") in pages:
            parts.append(_shift_headings(read_page(stem.with_suffix(".md"), root).strip()))
    if len(parts) == 1:
        raise UsageError(f"{root} holds no results.json/results.md, Markdown tables or PNG plots")
    return "\n\n".join(parts) + "\n"
