"""``qonnx compile model.onnx --ep qnn-htp --soc sm8650 -o out/``: EP-context model for the device.

Writes ``out/<model>_ctx.onnx`` (a stub that keeps the tokenizer metadata) and
the HTP context binary it names, after the strict check of ``qonnx check``
passed in the same session; on any problem it writes nothing and exits 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qonnx_bert.commands.check import add_target_options, print_soc_list

logger = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a QDQ model to a QNN HTP EP-context model (checked first)")
    p.add_argument("model", nargs="?", help="QDQ .onnx written by `qonnx quantize` (static shapes)")
    p.add_argument("-o", "--output-dir", help="folder for <model>_ctx.onnx and its .bin")
    add_target_options(p, eps=("qnn-htp",))
    p.set_defaults(func=run)


def run(args) -> int:
    from qonnx_bert.core.errors import UsageError
    from qonnx_bert.core.files import guard, output_folder
    from qonnx_bert.core.modelinfo import load_onnx
    from qonnx_bert.targets import require_ep
    from qonnx_bert.targets.htp_check import compile_htp
    from qonnx_bert.targets.qnn import context_files, resolve_soc

    if args.soc == "list":
        return print_soc_list()
    if require_ep(args.ep) != "qnn-htp":
        raise UsageError(f"compile supports --ep qnn-htp only (the CPU provider needs no compile step), not {args.ep}")
    if args.model is None or args.output_dir is None:
        raise UsageError("usage: qonnx compile MODEL.onnx --ep qnn-htp --soc sm8650 -o OUT_DIR")
    out, name = Path(args.output_dir), Path(args.model).stem
    guard([args.model], context_files(out, name), output_dirs=[out])
    soc = resolve_soc(args.soc)
    with output_folder(out):
        report, compiled = compile_htp(load_onnx(args.model), soc, out, name)
    print("\n".join(report.lines()))
    if compiled is None:
        logger.info("nothing written: fix the problems above, re-quantize, then compile again")
        return 1
    for path in [compiled.stub, *compiled.binaries]:
        logger.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    logger.info("compiled for %s (soc_model %d, HTP %s) in %.1f s", soc.name, soc.soc_model, soc.arch, compiled.seconds)
    return 0
