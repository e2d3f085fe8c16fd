"""Graph clean-up shared by the passes: constants nobody reads any more."""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def drop_unused_initializers(model: onnx.ModelProto, candidates: Iterable[str] | None = None) -> None:
    """Remove initializers that no node or graph output reads (only those in ``candidates`` when given)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    among = None if candidates is None else set(candidates)
    kept = [i for i in model.graph.initializer if i.name in used or (among is not None and i.name not in among)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
