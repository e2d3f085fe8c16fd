"""What the command line shows: qonnx's own messages, and third-party chatter only with ``-v``.

Exporting and quantizing pass through transformers (its load report and progress
bar), the torch exporter (warnings, INFO lines from its ONNX optimizer), onnxscript
("Replaced initializer ...", constant folding) and ONNX Runtime. Without ``-v`` their
log records below ERROR and their Python warnings are dropped and their progress bars
are off; qonnx's own library logs warnings, and each command says what it did and
wrote. With ``-v`` everything is shown, warnings routed through logging. Only the
command line calls this: a library never configures its caller's logging.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

THIRD_PARTY = ("torch", "onnxscript", "onnx_ir", "onnx", "transformers", "huggingface_hub", "onnxruntime", "datasets")


def configure(verbose: bool) -> None:
    """Set logging, warnings and third-party progress bars for a ``qonnx`` run (call before importing torch)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
        logging.captureWarnings(True)
        return
    # Read by transformers and huggingface_hub at import; an explicit setting by the user wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # torch resets its "torch" logger to WARNING when imported (torch._logging), after the
    # setLevel below when the import is lazy; TORCH_LOGS is what that reset reads.
    os.environ.setdefault("TORCH_LOGS", "-torch")
    logging.getLogger("qonnx_bert.commands").setLevel(logging.INFO)  # each command's closing line(s)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
