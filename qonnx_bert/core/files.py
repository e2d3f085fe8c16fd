"""The path guard and safe outputs: no input is ever overwritten, no output appears half-written.

Every command declares what it reads and writes and calls :func:`guard` before any
work. The guard resolves each path (realpath, and (st_dev, st_ino) where it exists,
so ``../``, symlinks and hard links are seen through), expands an ``.onnx`` input to
its external-data files and a directory input to the files under it, and refuses:
an output that is an input, two outputs that coincide, a file output that is an
existing directory (or a directory output that is an existing file), and an output
whose nearest existing folder cannot be written. The work then runs, and
:func:`atomic_outputs` writes every output to a temporary file created only then,
renaming them all at the end, all or none; on any failure, Ctrl-C or SIGTERM the temporary files
and the folders it created are removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from qonnx_bert.core.errors import UsageError

PathLike = str | Path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _key(path: Path) -> tuple:
    """What makes two paths the same file: the inode where the file exists, else the resolved path."""
    if path.exists():
        st = path.stat()
        return (st.st_dev, st.st_ino)
    return (str(path.resolve()),)


def external_data_files(model: PathLike) -> list[Path]:
    """The files an ``.onnx`` keeps its weights in; a location outside the model's folder is refused.

    ONNX Runtime and ``onnx.load`` refuse such a location too, but only when the work
    starts; the guard must know these files before, to keep every output off them.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = Path(model)
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:  # not ONNX: the command's own reader says so with its own message
        return []
    folder = model.resolve().parent
    found = []
    for tensor in _get_all_tensors(proto):
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            target = (folder / location).resolve()
            if Path(location).is_absolute() or not target.is_relative_to(folder):
                raise UsageError(
                    f"{model} names external data {location!r} outside its folder; move it beside the model"
                )
            found.append(target)
    return sorted(set(found))


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file()] + [path]
    if path.suffix == ".onnx" and path.is_file():
        return [path, *external_data_files(path)]
    return [path]


def _check_writable(path: Path, *, directory: bool) -> None:
    if path.is_dir() and not directory:
        raise UsageError(f"output {path} is an existing directory; give a file path")
    if path.exists() and not path.is_dir() and directory:
        raise UsageError(f"output folder {path} is an existing file; give a folder path")
    parent = _nearest_existing(path if directory else path.parent)
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: folder {parent} is not writable (read-only or no permission)")


def guard(
    inputs: Iterable[PathLike | None],
    outputs: Iterable[PathLike | None],
    *,
    output_dirs: Iterable[PathLike | None] = (),
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, or cannot be written.

    ``None`` entries (options not given) are skipped. Directory outputs (``output_dirs``)
    are folders the command writes files into.
    """
    taken = {}
    for given in filter(None, inputs):
        for path in _input_files(Path(given)):
            taken.setdefault(
                _key(path), f"the input file {given}" if path == Path(given) else f"{path}, read from {given}"
            )
    written: dict[tuple, Path] = {}
    declared = [(Path(p), True) for p in filter(None, output_dirs)] + [(Path(p), False) for p in filter(None, outputs)]
    for path, directory in declared:
        key = _key(path)
        if key in taken:
            raise UsageError(f"output {path} is {taken[key]}; choose another output path")
        if key in written:
            raise UsageError(f"outputs {written[key]} and {path} are the same file; give each its own path")
        _check_writable(path, directory=directory)
        written[key] = path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def _remove_empty(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            d.rmdir()


@contextlib.contextmanager
def atomic_outputs(*paths: PathLike) -> Iterator[tuple[Path, ...]]:
    """Temporary paths, one per output, renamed onto the outputs together when the block succeeds.

    Call it when the work is done: the temporary files (and missing folders) are
    created only now, with the user's umask (``mkstemp`` alone would make them 0600).
    On failure they are removed, and so are the folders this call created.
    """
    targets = [Path(p) for p in paths]
    created: list[Path] = []
    temps: list[Path] = []
    mode = 0o666 & ~_umask()
    done = False
    try:
        for target in targets:
            created += _make_dirs(target.parent)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            temps.append(Path(tmp))
        yield tuple(temps)
        for tmp in temps:
            os.chmod(tmp, mode)  # here, not at creation: a writer may have replaced the temp file with its own
        _replace_all(temps, targets)
        done = True
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if not done:
            _remove_empty(created)


def _replace_all(temps: list[Path], targets: list[Path]) -> None:
    """Rename each temporary onto its target, all or none: a failed rename puts back what was replaced.

    POSIX renames one file atomically, not several; so each existing target is first
    hard-linked to a backup beside it, and on a failure (a full disk, a folder made
    read-only meanwhile, a signal) the outputs already renamed are restored from their
    backups, or removed where there was none.
    """
    backups: list[Path | None] = []
    renamed: list[Path] = []
    try:
        for target in targets:
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.{os.getpid()}.bak")
                os.link(target, backup)
            backups.append(backup)
        for tmp, target in zip(temps, targets, strict=True):
            os.replace(tmp, target)
            renamed.append(target)
    except BaseException:
        for target, backup in zip(renamed, backups, strict=False):
            with contextlib.suppress(OSError):
                if backup is None:
                    target.unlink()
                else:
                    os.replace(backup, target)
        raise
    finally:
        for backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike, *, inputs: tuple[PathLike, ...] = ()) -> Iterator[Path]:
    """One output: :func:`guard` against ``inputs``, then :func:`atomic_outputs`."""
    guard(inputs, [path])
    with atomic_outputs(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def output_folder(path: PathLike) -> Iterator[Path]:
    """A folder the block writes files into; on the way out, the folders made since that stayed empty are removed.

    So a failed (or interrupted, or nothing-to-write) run leaves no empty folder behind.
    """
    path = Path(path)
    before = {p for p in path.rglob("*") if p.is_dir()} if path.is_dir() else set()
    created = _make_dirs(path)
    try:
        yield path
    finally:
        new = sorted((p for p in path.rglob("*") if p.is_dir() and p not in before), key=lambda p: len(p.parts))
        _remove_empty([*created, *new])


def read_json_object(path: PathLike, what: str, hint: str) -> dict:
    """A JSON object from ``path``; one-line errors name ``what`` it should be and ``hint`` how to make one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found; {hint}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory; give the file; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not JSON; {hint}") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a {what}; {hint}")
    return data


def require(doc: dict, key: str, kind: type | tuple[type, ...], where: str) -> object:
    """``doc[key]``, which must be of ``kind``: the one schema check of every qonnx file format.

    ``where`` names the file (and the entry inside it); the error names the key and the
    expected type. ``bool`` is not accepted where a number is expected.
    """
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
    if key not in doc:
        raise UsageError(f"{where}: missing key {key!r} ({names} expected)")
    value = doc[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise UsageError(f"{where}: key {key!r} must be {names}, got {json.dumps(value)[:40]}")
    return value


_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
}


PROTOBUF_LIMIT = 2**31 - 1  # bytes: protobuf serializes no larger message, so no larger single .onnx file


def model_bytes(model) -> int:
    """The serialized size of ``model`` (an ``onnx.ModelProto``).

    Protobuf refuses to size a message past 2 GB at all (``EncodeError``); there the parts are summed:
    the nodes and the initializers one by one (the rest of a model is small beside them).
    """
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize()
    except EncodeError:
        nodes = sum(n.ByteSize() for n in model.graph.node)
        return nodes + sum(i.ByteSize() for i in model.graph.initializer)


def too_large(model) -> bool:
    """Whether ``model`` (an ``onnx.ModelProto``) can only be written with its weights in external data.

    Sized from the initializers' dims and the nodes: ``model_bytes`` would serialize the whole
    model (protobuf's ``ByteSize`` does), a model-sized copy just to compare it with 2 GB.
    """
    import onnx

    weights = sum(
        math.prod(i.dims) * onnx.helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
        for i in model.graph.initializer
        if i.data_location != onnx.TensorProto.EXTERNAL
    )
    return weights + sum(n.ByteSize() for n in model.graph.node) > PROTOBUF_LIMIT


def check_size(size: int, path: PathLike) -> None:
    """Refuse a single-file model of ``size`` bytes over protobuf's limit, naming ``--external-data``."""
    if size > PROTOBUF_LIMIT:
        raise UsageError(
            f"{path} would be {size / 2**20:,.0f} MB, over protobuf's 2 GB limit for one file; pass "
            f"`external_data` (weights written to {external_data_path(path).name} beside it)"
        )


def external_data_path(path: PathLike) -> Path:
    """Where a model written with ``--external-data`` keeps its weights: ``model.onnx.data`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def model_outputs(path: PathLike, external_data: bool) -> list[Path]:
    """The files a model output is: the ``.onnx``, and its data file with ``external_data``."""
    return [Path(path), external_data_path(path)] if external_data else [Path(path)]


def write_model(model, path: PathLike, temps: tuple[Path, ...]) -> None:
    """Write ``model`` into the :func:`atomic_outputs` temporaries ``temps`` of ``model_outputs(path, ...)``.

    One temporary: a single file, refused over 2 GB. Two: the weights go to the data file, whose
    name the ``.onnx`` records, so both are staged in a folder beside ``path`` under their final
    names first; ``model`` is then left referring to the written data (onnx moves weights out in place).
    """
    import onnx

    if len(temps) == 1:
        check_size(model_bytes(model), path)
        onnx.save(model, str(temps[0]))
        return
    path = Path(path)
    data = external_data_path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        staged = Path(folder) / path.name
        onnx.save(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
        os.replace(Path(folder) / data.name, temps[1])
        os.replace(staged, temps[0])


def save_model(model, path: PathLike, *, external_data: bool = False) -> None:
    """:func:`write_model` under :func:`atomic_outputs`: the model's files appear whole and together or not at all."""
    with atomic_outputs(*model_outputs(path, external_data)) as temps:
        write_model(model, path, temps)
