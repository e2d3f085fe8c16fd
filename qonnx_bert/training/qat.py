"""Quantization-aware training (the paper's Section 5): fine-tune through the deployed QDQ graph.

The checkpoint is exported, quantized with the PTQ ranges (and low-bit weights), and that
QDQ graph is trained in PyTorch (``QdqModule``) with the paper's schedule: Adam, linear
warm-up over 10% of the steps then linear decay, max sequence length 128. Outputs, in
``out_dir``: ``checkpoint/`` (the HF model with the trained weights), ``ranges.json`` (the
learned ranges, fingerprinted for that checkpoint's export), ``model.qdq.onnx`` (what
``qonnx export`` + ``qonnx quantize --ranges`` give), ``qat.json``, ``dev_logits.npy``, written
together at the end. ``qat_state.pt`` holds the last finished epoch: a rerun with the same settings
resumes after it, so it is the one file an interrupted run leaves.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from qonnx_bert.calibration.ranges import RangeTable, model_fingerprint
from qonnx_bert.core.errors import UsageError
from qonnx_bert.core.files import atomic_output, atomic_outputs, guard, output_folder, write_model
from qonnx_bert.graph.qdq import GRAPH_OUTPUT_SUFFIX
from qonnx_bert.inputs.export import export_model
from qonnx_bert.inputs.finetune import (
    atomic_directory,
    bucket_batches,
    collate,
    directory_files,
    encode,
    loss_fn,
    make_optimizer,
    score_logits,
    seed_everything,
    subsample,
)
from qonnx_bert.inputs.glue.tasks import get_task, load_task, split_file
from qonnx_bert.inputs.models import ModelSource, load_model, resolve_model
from qonnx_bert.passes.lowbit_weights import weight_sites
from qonnx_bert.quantize.api import quantize, scheme_floats
from qonnx_bert.quantize.config import SchemeConfig
from qonnx_bert.quantize.lowbit import LowBitConfig
from qonnx_bert.quantize.schemes import config_for
from qonnx_bert.training.fake_quant import asymmetric_scale_zero_point
from qonnx_bert.training.qdq_module import QdqModule
from qonnx_bert.training.weight_views import weight_views

SCHEMES = ("w8a8", "w8a32", "mp", "peg")
STATE = "qat_state.pt"
DEV_LOGITS = "dev_logits.npy"  # the fake-quantized model's dev logits after the last epoch: what deployment must match
CHECKPOINT = "checkpoint"
OUTPUTS = ("ranges.json", "model.qdq.onnx", "qat.json", DEV_LOGITS)  # written together with checkpoint/


@dataclass(frozen=True)
class QatConfig:
    task: str
    scheme: str = "w8a8"
    lowbit: LowBitConfig = field(default_factory=LowBitConfig)
    epochs: int = 3
    lr: float = 2e-5
    # Peak learning rate of the activation ranges' log scale (``LearnedRange``): a relative change per
    # step, about the one the paper's Adam steps on the 8-bit scale give a typical MiniLM range.
    range_lr: float = 1e-3
    distill: float = 0.0  # weight of the FP32 model's outputs as targets; 1 - distill on the labels
    batch_size: int = 32
    max_length: int = 128
    warmup_ratio: float = 0.1
    seed: int = 0
    max_train_examples: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UsageError(f"`scheme={self.scheme}`: this version trains {', '.join(SCHEMES)}")
        rates = (self.lr, self.range_lr)
        if self.epochs < 1 or self.batch_size < 1 or not all(0 < r < math.inf for r in rates):
            raise UsageError("QAT needs `epochs` >= 1, `batch_size` >= 1 and finite `lr` and `range_lr` > 0")
        if not 0 <= self.distill <= 1:
            raise UsageError(f"`distill={self.distill}` is a weight in [0, 1] (0: the labels only)")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise UsageError(f"`max_train_examples={self.max_train_examples}`: QAT needs at least 1 example")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"`seed={self.seed}` must be in [0, 2**32 - 1]")


def _hf_names(model, weights: dict[str, np.ndarray]) -> dict[str, tuple[str, bool]]:
    """ONNX weight -> (HF parameter, transposed): matched by value, as the exporter copies them exactly."""
    params = {name: p.detach().numpy() for name, p in model.named_parameters()}
    found = {}
    for onnx_name, w in weights.items():
        for name, p in params.items():
            if p.shape == w.shape and np.array_equal(p, w):
                found[onnx_name] = (name, False)
                break
            if p.ndim == 2 and p.T.shape == w.shape and np.array_equal(p.T, w):
                found[onnx_name] = (name, True)
                break
        else:
            raise UsageError(f"ONNX weight {onnx_name} matches no parameter of the checkpoint; report this model")
    return found


def resolve_device(name: str):
    """``auto`` (CUDA when torch sees it, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked before any work."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"`device={name}` is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"`device={name}`: this torch sees no CUDA device; use `device=cpu`")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"`device={name}`: torch sees {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"`device={name}`: QAT runs on cpu or cuda")
    return device


def _batch(examples, idx, pad_id, device) -> dict:
    return {k: v.to(device) for k, v in collate(examples, idx, pad_id).items()}


def predict(module, examples, batch_size: int, pad_id: int, num_labels: int) -> np.ndarray:
    """The fake-quantized model's logits for ``examples``, in order (on the module's device)."""
    import torch

    order = np.argsort([len(e["input_ids"]) for e in examples], kind="stable")
    logits = np.zeros((len(examples), num_labels), np.float32)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits[idx] = module(**_batch(examples, idx, pad_id, module.device)).cpu().numpy()
    return logits


def _out_of_memory(batch_size: int) -> UsageError:
    return UsageError(
        f"out of memory at `batch_size={batch_size}`: rerun with `batch_size={max(1, batch_size // 2)}` "
        "(finished epochs are kept and resumed)"
    )


def distillation_loss(logits, teacher, num_labels: int):
    """The FP32 model's outputs as targets: KL divergence of the class distributions, MSE for regression."""
    import torch.nn.functional as F

    if num_labels == 1:
        return F.mse_loss(logits, teacher)
    return F.kl_div(F.log_softmax(logits, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")


def _train_epoch(module, teacher, optimizer, scheduler, examples, labels, config: QatConfig, epoch: int, pad_id, bar):
    import torch

    rng = np.random.default_rng(config.seed + epoch)  # per epoch: a resumed run draws the same batches
    target, num_labels = torch.tensor(labels, device=module.device), get_task(config.task).num_labels
    lengths = np.array([len(e["input_ids"]) for e in examples])
    for idx in bucket_batches(lengths, config.batch_size, rng):
        try:
            batch = _batch(examples, idx, pad_id, module.device)
            logits = module(**batch)
            loss = loss_fn(logits, target[idx], num_labels)
            if config.distill:
                with torch.no_grad():
                    expected = teacher(**batch).logits
                loss = (1 - config.distill) * loss + config.distill * distillation_loss(logits, expected, num_labels)
            loss.backward()
        except torch.OutOfMemoryError:
            raise _out_of_memory(config.batch_size) from None
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)


def _save_state(
    path: Path, epoch: int, module, optimizer, scheduler, config: QatConfig, history: list, logits: np.ndarray
) -> None:
    import torch

    state = {
        "epoch": epoch,
        "config": repr(config),
        "history": history,
        "logits": logits,  # the dev logits a resumed run writes when no epoch is left to train
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, module, optimizer, scheduler, config: QatConfig) -> tuple[int, list, np.ndarray | None]:
    """The first epoch still to run, the dev metrics and logits so far (0, [], None on a fresh start)."""
    import torch

    if not path.exists():
        return 0, [], None
    try:
        state = torch.load(path, weights_only=False, map_location=module.device)  # saved on another device too
    except Exception:  # a truncated or foreign file: pickle, zip or torch errors
        raise UsageError(f"{path} is not a qat state; use a new -o folder or delete it") from None
    if not isinstance(state, dict) or state.get("config") != repr(config) or "logits" not in state:
        raise UsageError(f"{path} is from a run with other settings; use a new -o folder or delete it")
    module.load_state_dict(state["module"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"] + 1, state["history"], state["logits"]


def learned_range_table(ranges: RangeTable, learned: dict, fp32: onnx.ModelProto) -> RangeTable:
    """The ranges file QAT writes: ``ranges`` with the ``learned`` ones, declared for ``fp32`` (the trained model)."""
    tensors = {
        t: {**e, **dict(zip(("min", "max"), learned.get(t, (e["min"], e["max"]))))} for t, e in ranges.tensors.items()
    }
    model = {**ranges.model, "fingerprint": model_fingerprint(fp32), "source": f"qat of {ranges.model.get('source')}"}
    return RangeTable(model, {**ranges.calibration, "qat": True}, tensors, ranges.per_channel)


def _scheme(config: QatConfig) -> SchemeConfig:
    return config_for(config.scheme, **config.lowbit.fields())


def deployed_model(fp32: onnx.ModelProto, config: QatConfig, ranges: RangeTable) -> onnx.ModelProto:
    """What ``qonnx quantize`` writes for ``fp32`` with the QAT run's scheme and low-bit settings."""
    return quantize(fp32, _scheme(config), ranges)[0]


def ranges_for(ranges: RangeTable, model: onnx.ModelProto) -> RangeTable:
    """``ranges`` declared for ``model`` (a copy of the calibrated model with other weights)."""
    return RangeTable(
        {**ranges.model, "fingerprint": model_fingerprint(model)},
        ranges.calibration,
        ranges.tensors,
        ranges.per_channel,
    )


def trainable_module(fp32: onnx.ModelProto, config: QatConfig, ranges: RangeTable) -> QdqModule:
    """The deployed QDQ graph of ``fp32`` as a module training ``fp32``'s weights (through PEG's gathers)."""
    scheme = _scheme(config)
    floats = scheme_floats(fp32, scheme, ranges)
    qdq = deployed_model(fp32, config, ranges)
    names = [s.name for s in weight_sites(qdq, floats)]
    views = weight_views(fp32, floats, names, lambda tagged: scheme_floats(tagged, scheme, ranges_for(ranges, tagged)))
    trained = {source for source, _ in views.values()}
    bases = {i.name: onnx.numpy_helper.to_array(i) for i in fp32.graph.initializer if i.name in trained}
    return QdqModule(qdq, floats, ranges, config.lowbit, range_sources(fp32, config, ranges), views, bases)


def range_sources(fp32: onnx.ModelProto, config: QatConfig, ranges: RangeTable) -> dict[str, str]:
    """For each quantized tensor of the deployed graph, the ranges-file tensor whose range sets its scale.

    The writer ties some ranges (ONNX Runtime's quantizer gives a Transpose or Reshape output its
    input's) and fixes others (the Softmax output's); learning those independently would train a
    model the learned ranges do not deploy. Found by writing the model once with each tensor's
    range widened by a factor of its own and reading which factor each quantizer's scale shows.
    """
    factors = {t: 1 + (i + 1) * 2.0**-10 for i, t in enumerate(ranges.tensors)}
    tensors = {t: {**e, "min": e["min"] * factors[t], "max": e["max"] * factors[t]} for t, e in ranges.tensors.items()}
    widened = RangeTable(ranges.model, ranges.calibration, tensors, ranges.per_channel)
    qdq = deployed_model(fp32, config, widened)
    by_scale: dict[tuple[int, float], list[str]] = {}
    for t in widened.tensors:
        for qmax in (255, 65535):
            by_scale.setdefault((qmax, float(asymmetric_scale_zero_point(*widened.range(t), qmax)[0])), []).append(t)
    inits = {i.name: i for i in qdq.graph.initializer}
    sources = {}
    for node in qdq.graph.node:
        zp = inits.get(node.input[2]) if node.op_type == "QuantizeLinear" and len(node.input) > 2 else None
        if zp is None:
            continue
        qmax = 65535 if zp.data_type == onnx.TensorProto.UINT16 else 255
        matches = by_scale.get((qmax, float(onnx.numpy_helper.to_array(inits[node.input[1]]))), [])
        if len(matches) == 1:  # a scale no widened range gives is fixed by a rule: not learned
            sources[node.input[0].removesuffix(GRAPH_OUTPUT_SUFFIX)] = matches[0]
    return sources


def with_weights(fp32: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``fp32`` with the initializers named in ``weights`` replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    for init in out.graph.initializer:
        if init.name in weights:
            init.CopyFrom(onnx.numpy_helper.from_array(weights[init.name], init.name))
    return out


def _written(fp32: onnx.ModelProto, module, ranges: RangeTable, config: QatConfig):
    """(the FP32 model with the trained weights, the learned ranges, the QDQ model they deploy)."""
    trained = with_weights(fp32, module.learned_weights())
    learned = learned_range_table(ranges, module.learned_ranges(), trained)
    return trained, learned, deployed_model(trained, config, learned)


def qat_outputs(out_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """The files and folders :func:`run_qat` writes into ``out_dir``, for the path guard.

    ``checkpoint/`` is replaced whole, so every file it holds now is an output too.
    """
    out = Path(out_dir)
    files = [out / name for name in (*OUTPUTS, STATE)]
    return [*files, *directory_files(out / CHECKPOINT)], [out, out / CHECKPOINT]


def run_qat(
    checkpoint: str,
    data_dir,
    ranges_path: str | Path,
    out_dir: str | Path,
    config: QatConfig,
    *,
    progress=True,
    device: str = "cpu",
) -> dict:
    """Train ``checkpoint`` quantization-aware on ``config.task``; write the outputs above into ``out_dir``.

    ``device``: where to train (``resolve_device``); not part of ``config``, so a run resumes on another.

    Every file it reads (checkpoint, ranges, GLUE TSVs) is kept off the outputs before any work; a
    failed run removes the folders it made, except the one holding the resume state.
    """
    task, out, where = get_task(config.task), Path(out_dir), resolve_device(device)
    source = resolve_model(checkpoint)
    if source.head_seed is not None or source.num_labels != task.num_labels:
        raise UsageError(
            f"{checkpoint} has no trained {task.num_labels}-label head for {task.name}: fine-tune it first"
        )
    files, folders = qat_outputs(out)
    reads = [split_file(task.name, split, data_dir) for split in ("train", "dev")]
    guard([source.path, ranges_path, *reads], files, output_dirs=folders)
    with output_folder(out):
        return _train(source, data_dir, ranges_path, out, config, progress, where)


def _train(source: ModelSource, data_dir, ranges_path, out: Path, config: QatConfig, progress: bool, device) -> dict:
    from transformers import AutoTokenizer

    task = get_task(config.task)
    train_split = subsample(load_task(task.name, "train", data_dir), config.max_train_examples, config.seed)
    dev_split = load_task(task.name, "dev", data_dir)
    ranges = RangeTable.load(ranges_path)
    seed_everything(config.seed)
    with tempfile.TemporaryDirectory(prefix="qonnx-qat.") as tmp:
        export_model(source.name, Path(tmp) / "fp32.onnx", max_length=config.max_length)
        fp32 = onnx.load(str(Path(tmp) / "fp32.onnx"))
    ranges.check_fits(fp32, [], ranges_path)
    module = trainable_module(fp32, config, ranges)
    hf = load_model(source)
    names = _hf_names(hf, module.learned_weights())
    module.to(device)
    hf.to(device)  # the teacher of ``distill``, and the checkpoint the trained weights are written into
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    pad_id = tokenizer.pad_token_id or 0
    train_ex, dev_ex = (
        encode(tokenizer, train_split, config.max_length),
        encode(tokenizer, dev_split, config.max_length),
    )
    steps = math.ceil(len(train_ex) / config.batch_size)
    recipe = {"lr": config.lr, "weight_decay": 0.0, "warmup_ratio": config.warmup_ratio}  # AdamW without decay: Adam
    own_rate = (list(module.ranges.parameters()), config.range_lr)
    optimizer, scheduler = make_optimizer(module, recipe, steps * config.epochs, own_rate)
    first, history, logits = _resume(out / STATE, module, optimizer, scheduler, config)
    module.refresh_weight_scales()
    bar = tqdm(
        total=steps * config.epochs, initial=steps * first, desc=f"qat {task.name}", unit="step", disable=not progress
    )
    with bar:  # closed before an error or interrupt is reported, so the message is the last line
        for epoch in range(first, config.epochs):  # weight scales: set at build or resume, refreshed after each epoch
            module.train()
            _train_epoch(module, hf, optimizer, scheduler, train_ex, train_split.labels, config, epoch, pad_id, bar)
            module.refresh_weight_scales()
            module.follow_writer(_written(fp32, module, ranges, config)[2])
            logits = predict(module, dev_ex, 64, pad_id, task.num_labels)
            dev = score_logits(dev_split, logits)
            history.append({"epoch": epoch + 1, "dev": dev})
            bar.write(f"epoch {epoch + 1}: dev score {dev['score']:.4f}")
            _save_state(out / STATE, epoch, module, optimizer, scheduler, config, history, logits)
    return _write_outputs(out, fp32, hf, tokenizer, names, module, ranges, config, history, logits)


def _write_outputs(out: Path, fp32, hf, tokenizer, names, module, ranges, config: QatConfig, history, logits) -> dict:
    """The checkpoint folder and the files of ``OUTPUTS``, renamed into ``out`` together at the end."""
    import torch

    weights, (_, learned, deployed) = module.learned_weights(), _written(fp32, module, ranges, config)
    with torch.no_grad():
        params = dict(hf.named_parameters())
        for onnx_name, (name, transposed) in names.items():
            w = weights[onnx_name]
            params[name].copy_(torch.from_numpy(w.T if transposed else w))
    record = {"config": json.loads(json.dumps(asdict(config), default=str)), "history": history}
    targets = [out / name for name in OUTPUTS]
    with atomic_outputs(*targets) as temps, atomic_directory(out / CHECKPOINT) as folder:
        ranges_tmp, qdq_tmp, record_tmp, logits_tmp = temps
        hf.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        learned.write(ranges_tmp)
        write_model(deployed, targets[1], (qdq_tmp,))
        record_tmp.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
        with open(logits_tmp, "wb") as f:
            np.save(f, logits)
    return record
