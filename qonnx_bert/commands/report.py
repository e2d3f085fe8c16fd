"""``qonnx report RESULTS_DIR [--html]``: bench tables, debug/outlier tables and plots on one Markdown or HTML page."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("report", help="gather bench tables and plots of a results directory into one Markdown page")
    p.add_argument("results", help="a directory: the -o of `qonnx bench`, plus any debug/outliers PNG and .md files")
    p.add_argument("-o", "--output", help="file to write (default: RESULTS/report.md, or RESULTS/report.html)")
    p.add_argument(
        "--html",
        action="store_true",
        help="one self-contained HTML page instead: tables, an accuracy-vs-latency chart, plots inlined",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.core.files import atomic_outputs, guard

    default = "report.html" if args.html else "report.md"
    output = Path(args.output) if args.output else Path(args.results) / default
    guard(_read_by_report(Path(args.results), output), [output])
    if args.html:
        from qonnx_bert.benchmarks.html_report import build_html as build
    else:
        from qonnx_bert.benchmarks.report import build_report as build
    page = build(args.results, output)
    with atomic_outputs(output) as (tmp,):
        tmp.write_text(page)
    logger.info("wrote %s", output)
    return 0


def _read_by_report(results: Path, output: Path) -> list[Path]:
    """Every file under the results folder, its own earlier page aside: the output may land on no other.

    Not only what the page reads or links: bench cells, ranges and models live there too,
    and a results folder is what a user can least afford to lose. Listed file by file, as
    the folder itself would count the output too.
    """
    from qonnx_bert.benchmarks.report import is_report_page

    if not results.is_dir():
        return [results]
    own = output.resolve()
    found = [p for p in results.rglob("*") if p.is_file()]
    return [p for p in found if p.resolve() != own or not is_report_page(p)]
