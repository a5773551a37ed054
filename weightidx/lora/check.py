"""``weightidx lora check``: which modules of a LoRA would load on a model, before a long render.

A module loads when its name resolves to one of the model's weights (``names.Resolver``) and its
factors fit that weight's shape (``up`` rows = the weight's rows, ``down`` columns = the rest of
its dimensions), with its DoRA magnitude (if any) one value per row or column. Everything else
in the file is listed with the reason it would be ignored: a name that fits no weight (with the
nearest), or several; factors or a magnitude of the wrong shape (LoRA, LoKr, LoHa, DoRA); a kind
this check does not apply (full deltas); a part whose module is incomplete; an unknown tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from weightidx.errors import LoraError
from weightidx.fingerprint.sketch import view_2d
from weightidx.index.cache import cached_index
from weightidx.index.reader import is_index_file, load_index
from weightidx.lora.convert import read_lora_file
from weightidx.lora.dora import shape_problem


@dataclass
class LoraCheck:
    """The modules that load (``module``, ``weight``) and what would be ignored (``item``,
    ``reason``), for a LoRA on one model."""

    lora: str
    model: str
    loads: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"lora": self.lora, "model": self.model, "loads": self.loads, "ignored": self.ignored}


def check_lora(lora: Path | str, model: Path | str, cache: Path | None = None) -> LoraCheck:
    """Check a LoRA against a model given as a checkpoint (indexed on first use) or its index.

    Raises:
        LoraError: the LoRA cannot be read; InputError / CheckpointError / IndexFileError: the model.
    """
    path = Path(model)
    indexed = load_index(path if is_index_file(path) else cached_index(path, cache))
    shapes = {key: tuple(row["shape"]) for key, row in indexed.rows.items()}
    read = read_lora_file(lora, set(shapes), label="the model")
    if not read.modules and not read.lycoris and not read.others:
        raise LoraError(f"{lora}: holds no tensors; is it a LoRA?")
    result = LoraCheck(Path(lora).name, indexed.name)
    for module in read.modules:
        if module.unresolved is not None or module.target not in shapes:
            item = ", ".join(module.keys) or module.target
            result.ignored.append({"item": item, "reason": module.unresolved or "no weight of that name"})
            continue
        shape = shapes[module.target]
        rows, cols = view_2d(shape)
        magnitude = None if module.magnitude is None else shape_problem(module.magnitude, shape, (rows, cols))
        if magnitude is not None:
            result.ignored.append({"item": ", ".join(module.keys), "reason": f"DoRA: {magnitude}"})
            continue
        if len(shape) < 2 or not module.fits(shape):
            result.ignored.append(
                {
                    "item": ", ".join(module.keys) or module.target,
                    "reason": f"factor shapes up {list(module.up.shape)} / down {list(module.down.shape)} "
                    f"do not fit the weight {list(shape)}",
                }
            )
            continue
        result.loads.append({"module": module.name, "weight": module.target, "rank": module.rank})
    for module in read.lycoris:
        reason = module.problem() or module.unresolved
        if reason is None and module.target is not None and module.shape != view_2d(shapes[module.target]):
            reason = f"{module.label} factors do not fit the weight {list(shapes[module.target])}"
        if reason is None and module.magnitude is not None and module.target is not None:
            shape = shapes[module.target]
            problem = shape_problem(module.magnitude, shape, view_2d(shape))
            reason = None if problem is None else f"DoRA: {problem}"
        if reason is None:
            result.loads.append({"module": module.name, "weight": module.target, "kind": module.kind})
        else:
            parts = ", ".join(
                [f"{module.name}.{part}" for part in module.parts]
                + ([module.magnitude_key] if module.magnitude_key else [])
            )
            result.ignored.append({"item": parts, "reason": reason})
    for other in read.others:
        kind = other["kind"]
        reason = (
            "not a LoRA factor, alpha or adapter tensor weightidx knows"
            if kind == "unknown"
            else f"{kind}: not applied by this check"
        )
        result.ignored.append({"item": other["tensor"], "reason": reason})
    return result
