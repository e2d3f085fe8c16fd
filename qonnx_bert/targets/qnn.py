"""Qualcomm HTP through the ``onnxruntime-qnn`` plugin: SoCs, sessions, EP-context compile.

``onnxruntime-qnn`` 2.x is a plugin execution provider on top of a normal
``onnxruntime``: it is registered as a library, then chosen through its devices
(``providers=["QNNExecutionProvider"]`` is not the plugin path). Its HTP backend
runs on x86-64 Linux: it validates each op for the chosen SoC, compiles, writes
EP-context binaries and runs inference in an emulator. ``soc_model`` must always
be given on x86 (without it some graphs fail at finalize with error 1002).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from qonnx_bert.core.errors import UsageError

logger = logging.getLogger(__name__)

EP_NAME = "QNNExecutionProvider"
INSTALL_HINT = 'pip install "qonnx-bert[qnn]"  (the onnxruntime-qnn plugin)'


@dataclass(frozen=True)
class Soc:
    """A Snapdragon SoC as QNN names it: ``soc_model`` id and Hexagon (HTP) architecture."""

    name: str
    soc_model: int
    arch: str
    device: str


# Ids measured with onnxruntime-qnn 2.7.0 (QNN 2.51); each compiles and emulates on x86.
SOCS = {
    s.name: s
    for s in (
        Soc("sa8295", 39, "v68", "SA8295P (automotive)"),
        Soc("sm8550", 43, "v73", "Snapdragon 8 Gen 2"),
        Soc("sm8650", 57, "v75", "Snapdragon 8 Gen 3"),
        Soc("sm8750", 69, "v79", "Snapdragon 8 Elite"),
        Soc("sm8850", 87, "v81", "Snapdragon 8 Elite Gen 5"),
    )
}


def resolve_soc(name: str) -> Soc:
    """A SoC of the table by friendly name (``sm8650``) or QNN ``soc_model`` id (``57``).

    Other ids are refused: QNN accepts any integer and then rejects every op, which
    reads as a fault of the model.
    """
    key = name.strip().lower()
    if key in SOCS:
        return SOCS[key]
    by_id = {str(s.soc_model): s for s in SOCS.values()}
    if key in by_id:
        return by_id[key]
    ids = ", ".join(f"{s.name} ({s.soc_model})" for s in SOCS.values())
    raise UsageError(f"unknown SoC {name!r}; choose one of: {ids}; `soc=list` shows them")


def soc_table() -> list[str]:
    """The lines printed by ``--soc list``."""
    rows = [f"{s.name:<8} soc_model={s.soc_model:<3} HTP {s.arch}  {s.device}" for s in SOCS.values()]
    return [*rows, "(--soc takes the name or the soc_model id, e.g. --soc 57)"]


@contextlib.contextmanager
def captured_native_output(text: list[str] | None = None) -> Iterator[list[str]]:
    """Capture what native code writes to file descriptors 1 and 2 into ``text`` (appended on exit).

    QNN states why it rejects a node only as a log warning on stderr, and its
    HTP library prints a banner on stdout. The check needs the warnings; the
    user needs neither in the output (both go to debug logging, ``qonnx -v``).
    """
    text = [] if text is None else text
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace"))
            logger.debug("%s", text[-1])


_DEVICES: list = []


def qnn_devices() -> list:
    """The QNN plugin's EP devices, registering the plugin library once per process."""
    if _DEVICES:
        return _DEVICES
    try:
        import onnxruntime_qnn
    except ImportError:
        raise UsageError(f"the qnn-htp target needs onnxruntime-qnn, which is not installed: {INSTALL_HINT}") from None
    with captured_native_output():
        ort.register_execution_provider_library(EP_NAME, onnxruntime_qnn.get_library_path())
    _DEVICES.extend(d for d in ort.get_ep_devices() if d.ep_name == EP_NAME)
    if not _DEVICES:
        raise UsageError(f"onnxruntime-qnn is installed but registered no device; reinstall it: {INSTALL_HINT}")
    return _DEVICES


def require_htp_model(model: onnx.ModelProto, path: str = "model") -> None:
    """Refuse what HTP cannot take whole: a model without activation quantizers, or dynamic shapes."""
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise UsageError(
            f"{path} has no activation QuantizeLinear (float or weight-only model); "
            "HTP runs integer graphs: quantize it first (`qonnx quantize --scheme w8a8`)"
        )
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            shape = [d.dim_param or d.dim_value for d in dims]
            raise UsageError(
                f"{path} input {value.name} has dynamic shape {shape}; "
                "HTP needs static shapes: re-export with `qonnx export --static-shape 1,128`"
            )


def htp_session(
    model: onnx.ModelProto | Path,
    soc: Soc,
    *,
    strict: bool = True,
    options: dict[str, str] | None = None,
    config: dict[str, str] | None = None,
    log: list[str] | None = None,
) -> ort.InferenceSession:
    """An HTP session; ``strict`` disables CPU fallback, so any node QNN rejects fails creation.

    ``model`` is a model, or the path of one (an EP-context stub must be opened
    by path: it names its ``.bin`` relative to itself). ``options`` are extra
    QNN provider options, ``config`` extra session config entries; the
    assignment of nodes to providers is always recorded. Native log output is
    captured into ``log`` (or dropped to debug logging).
    """
    so = ort.SessionOptions()
    so.log_severity_level = 2  # QNN's per-node rejection reasons are warnings
    entries = {"session.record_ep_graph_assignment_info": "1", **(config or {})}
    if strict:
        entries["session.disable_cpu_ep_fallback"] = "1"
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    so.add_provider_for_devices(
        qnn_devices(), {"backend_type": "htp", "soc_model": str(soc.soc_model), **(options or {})}
    )
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    with captured_native_output(log):
        return ort.InferenceSession(source, so)


def emulated_session(model: onnx.ModelProto, soc: Soc) -> ort.InferenceSession:
    """A strict HTP session for inference: on x86 it runs in QNN's HTP emulator."""
    require_htp_model(model)
    return htp_session(model, soc)


@dataclass(frozen=True)
class Compiled:
    """An EP-context model: the stub ONNX (tokenizer metadata kept) and the HTP binary it names."""

    stub: Path
    binaries: list[Path]
    seconds: float


def context_config(stub: Path) -> dict[str, str]:
    """Session config that makes session creation write an EP-context stub plus a separate .bin."""
    return {"ep.context_enable": "1", "ep.context_file_path": str(stub), "ep.context_embed_mode": "0"}


def context_files(out_dir: Path, name: str) -> tuple[Path, Path]:
    """What ``qonnx compile`` writes: the stub ``<name>_ctx.onnx`` and the binary the QNN EP names after it.

    Known before the work starts, so the guard keeps both off the inputs (and off a folder).
    """
    stub = out_dir / f"{name}_ctx.onnx"
    return stub, stub.with_name(f"{stub.stem}_qnn.bin")
