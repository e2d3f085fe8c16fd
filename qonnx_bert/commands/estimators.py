"""``qonnx estimators``: the range estimators installed (built-in and plugins)."""

from __future__ import annotations

import inspect


def register(sub) -> None:
    p = sub.add_parser("estimators", help="list the installed range estimators and their parameters")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.calibration.estimators import estimator_names, get_estimator

    rows = []
    for name in estimator_names():
        cls = get_estimator(name)
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        shown = ", ".join(f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty)
        doc = inspect.getdoc(cls) or ""
        rows.append((name, shown, doc.splitlines()[0] if doc else ""))
    widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
    for name, shown, doc in rows:
        print(f"{name:{widths[0]}s}  {shown:{widths[1]}s}  {doc}")
    return 0
