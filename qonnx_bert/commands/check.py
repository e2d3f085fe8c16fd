"""``qonnx check model.onnx --ep qnn-htp --soc sm8650``: will it run fully quantized on the target?

Exit code 0 when the check passes, 1 when it finds a problem (each printed with
its node and fix), 2 on bad input. ``--soc list`` prints the known SoCs.
"""

from __future__ import annotations


def add_target_options(p, *, eps: tuple[str, ...]) -> None:
    """``--ep`` and ``--soc``, shared by check, compile and eval."""
    p.add_argument("--ep", default=eps[0], help=f"execution provider: {' or '.join(eps)} (default {eps[0]})")
    p.add_argument(
        "--soc",
        type=_soc,
        default="sm8650",
        help="Snapdragon SoC for qnn-htp, by name or soc_model id (default sm8650); `--soc list` shows them",
    )


def _soc(text: str) -> str:
    """``--soc``: ``list`` or a SoC of the known table, checked while parsing."""
    import argparse

    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.targets.qnn import resolve_soc

    if text != "list":
        try:
            resolve_soc(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def print_soc_list() -> int:
    from qonnx_bert.targets.qnn import soc_table

    print("\n".join(soc_table()))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "check", help="check that a QDQ model runs fully quantized on qnn-htp (emulated) or the CPU provider"
    )
    p.add_argument("model", nargs="?", help="QDQ .onnx written by `qonnx quantize`")
    add_target_options(p, eps=("qnn-htp", "cpu"))
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.core.files import guard
    from qonnx_bert.core.modelinfo import load_onnx
    from qonnx_bert.targets import require_ep

    if args.soc == "list":
        return print_soc_list()
    ep = require_ep(args.ep)
    if args.model is None:
        raise UsageError("no model given: qonnx check MODEL.onnx --ep qnn-htp --soc sm8650")
    guard([args.model], [])
    model = load_onnx(args.model)
    if ep == "cpu":
        from qonnx_bert.targets.cpu import check_cpu

        report = check_cpu(model, path=args.model)
    else:
        from qonnx_bert.targets.htp_check import check_htp
        from qonnx_bert.targets.qnn import resolve_soc

        report = check_htp(model, resolve_soc(args.soc), path=args.model)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1
