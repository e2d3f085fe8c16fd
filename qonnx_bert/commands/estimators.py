"""``qonnx estimators``: the range estimators installed (built-in and plugins)."""

from __future__ import annotations

import inspect


def register(sub) -> None:
    p = sub.add_parser("estimators", help="list the installed range estimators and their parameters")
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.calibration.estimators import estimator_names, get_estimator

    for name in estimator_names():
        cls = get_estimator(name)
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        shown = ", ".join(f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty)
        doc = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        print(f"{name:16s} {shown:40s} {doc}")
    return 0
