"""Where the HTP graph parts from the CPU provider: every node unit run alone on both, fed identical inputs.

    .venv/bin/python bench/htp_op_drift.py            # SST-2 checkpoint at 1x64 -> bench/results/htp-op-drift-sst2.md

A QDQ model's node unit is DequantizeLinear(s) -> op -> QuantizeLinear. The whole model runs
once on the CPU provider over a few dev sentences, recording every unit's integer inputs;
then each unit is cut out as a model of its own and run on the CPU provider and in QNN's
HTP emulator on those same inputs, so one op's difference cannot come from an earlier one.
Reported per op type: how many output elements differ and by how many steps of the unit's
own output grid (uint8 or uint16). Units HTP will not run alone (a bare layout op) are
counted apart. The model comes from ``bench/htp_emulated.sh``'s steps (export at a static
shape, ``qonnx calibrate`` defaults, ``qonnx quantize --scheme ...``).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qonnx_bert.calibration.calibrate import calibrate
from qonnx_bert.core.files import atomic_output
from qonnx_bert.core.runtime import exposing_session
from qonnx_bert.inputs.encode import Encoder
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.glue import load_task
from qonnx_bert.inputs.sequences import glue_train_sequences
from qonnx_bert.quantize import config_for, quantize
from qonnx_bert.targets import qnn

ROOT = Path(__file__).resolve().parent.parent


def node_units(model: onnx.ModelProto) -> list[tuple[list[onnx.NodeProto], list[str], str]]:
    """(nodes, integer inputs, integer output) of every DQ(s) -> op -> Q unit; weight DQs ride along."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = collections.defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    units = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        feeding = [producers.get(i) for i in node.input if i and i not in inits]
        if not feeding or any(d is None or d.op_type != "DequantizeLinear" for d in feeding):
            continue
        quants = [c for c in consumers[node.output[0]] if c.op_type == "QuantizeLinear"]
        if len(quants) != 1:
            continue
        activations = [d for d in feeding if d.input[0] not in inits]
        units.append(([*feeding, node, quants[0]], [d.input[0] for d in activations], quants[0].output[0]))
    return units


def unit_model(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[str], output: str, sample: dict
) -> onnx.ModelProto:
    """One node unit as a model whose inputs and output are its integer tensors (shapes from ``sample``)."""

    def info(name: str) -> onnx.ValueInfoProto:
        return onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(sample[name].dtype), sample[name].shape
        )

    used = {i for n in nodes for i in n.input}
    graph = onnx.helper.make_graph(
        nodes, "unit", [info(i) for i in inputs], [info(output)], [i for i in model.graph.initializer if i.name in used]
    )
    unit = onnx.helper.make_model(graph, opset_imports=model.opset_import)
    unit.ir_version = model.ir_version
    return unit


def drift(model: onnx.ModelProto, texts: list[str], soc: qnn.Soc) -> dict[str, dict]:
    """Per op type and output width ("LayerNormalization u8"): units run, elements compared, elements a
    whole uint8 step (or more) apart, the largest gap in uint8 steps (a uint16 step is 1/257 of one)."""
    units = node_units(model)
    names = sorted({t for _, inputs, out in units for t in [*inputs, out]})
    session = exposing_session(model, names)
    encoder = Encoder.from_model(model)
    records = [dict(zip(names, session.run(names, encoder.feeds([t])), strict=True)) for t in texts]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    table: dict[str, dict] = collections.defaultdict(
        lambda: {"units": 0, "alone_refused": 0, "elements": 0, "one": 0, "more": 0, "max": 0.0}
    )
    for nodes, inputs, out in units:
        wide = records[0][out].dtype == np.uint16
        op = f"{nodes[-2].op_type} {'u16' if wide else 'u8'}"
        unit = unit_model(model, nodes, inputs, out, records[0])
        try:
            htp = qnn.htp_session(unit, soc)
        except Exception:  # a bare layout op (e.g. a Transpose) that QNN does not take as a graph of its own
            table[op]["alone_refused"] += 1
            continue
        cpu = ort.InferenceSession(unit.SerializeToString(), plain, providers=["CPUExecutionProvider"])
        gaps = np.concatenate(
            [
                np.abs(cpu.run(None, feeds)[0].astype(np.int64) - htp.run(None, feeds)[0].astype(np.int64)).ravel()
                for feeds in ({i: r[i] for i in inputs} for r in records)
            ]
        ) / (257.0 if wide else 1.0)
        row = table[op]
        row["units"] += 1
        row["elements"] += gaps.size
        row["one"] += int(((gaps >= 1) & (gaps < 2)).sum())
        row["more"] += int((gaps >= 2).sum())
        row["max"] = max(row["max"], float(gaps.max()))
    return dict(table)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--static-shape", default="1,64")
    p.add_argument("--schemes", default="w8a8,mp,peg")
    p.add_argument("--soc", default="sm8650")
    p.add_argument("--sequences", type=int, default=8, help="dev sentences fed through every unit")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "glue")
    args = p.parse_args()
    soc = qnn.resolve_soc(args.soc)
    shape = tuple(int(v) for v in args.static_shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_model(f"minilm-l6-{args.task}", path, static_shape=shape)
        fp32 = onnx.load(str(path))
    ranges = calibrate(fp32, glue_train_sequences(args.task, args.data_dir, 64, 0), progress=False)
    texts = load_task(args.task, "dev", args.data_dir).texts_a[: args.sequences]
    results = {}
    for scheme in args.schemes.split(","):
        model, _ = quantize(fp32, config_for(scheme), ranges)
        results[scheme] = drift(model, texts, soc)
        print(scheme, json.dumps(results[scheme]), flush=True)
    out = ROOT / "bench" / "results" / f"htp-op-drift-{args.task}"
    with atomic_output(out.with_suffix(".json")) as tmp_json:
        tmp_json.write_text(
            json.dumps(
                {
                    "task": args.task,
                    "static_shape": shape,
                    "soc": soc.name,
                    "sequences": len(texts),
                    "schemes": results,
                },
                indent=1,
            )
        )
    lines = [
        f"# HTP ({soc.name}, emulated) vs CPU provider, one node unit at a time ({args.task}, {shape[0]}x{shape[1]}, "
        f"{len(texts)} dev sentences)",
        "",
        "`bench/htp_op_drift.py`: each unit fed the same integer inputs on both. Gaps in uint8 steps of the unit's",
        "output range (a uint16 output's step is 1/257 of that), so 8- and 16-bit units compare.",
        "",
    ]
    for scheme, table in results.items():
        lines += [
            f"## {scheme}",
            "",
            "| op, output | units | elements 1 uint8 step apart | 2 or more | largest gap (uint8 steps) | not run "
            "alone |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for op, r in sorted(
            table.items(), key=lambda kv: (-(kv[1]["one"] + kv[1]["more"]) / max(kv[1]["elements"], 1), -kv[1]["max"])
        ):
            share = (lambda n: f"{100 * n / r['elements']:.2f}%") if r["elements"] else (lambda n: "—")
            largest = f"{r['max']:.2f}" if r["elements"] else "—"
            lines.append(
                f"| {op} | {r['units']} | {share(r['one'])} | {share(r['more'])} | {largest} | {r['alone_refused']} |"
            )
        lines.append("")
    with atomic_output(out.with_suffix(".md")) as tmp_md:
        tmp_md.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
