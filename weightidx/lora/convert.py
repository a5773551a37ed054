"""Port a LoRA from model A's key space to model B's using a compare report, exactly.

A LoRA module adds ``ΔW = scale · up @ down`` to one weight (``scale = alpha / rank``, or
1 when the format folds it in). For each A weight the report says which B tensor (or
slice) it became and how; the same transform is applied to ΔW through the factors:

* rename, cast, reshape (conv <-> linear): the factors move as they are (down reshaped);
* transpose: ``ΔWᵀ = downᵀ @ upᵀ``, so up and down swap and transpose;
* fused in B (q, k, v -> qkv on dim 0): downs stacked, up block-diagonal, each part's
  scale folded into its block, alpha = the new rank; on dim 1 the roles swap;
* split in B (A fused, B parts): each part keeps down and takes its rows of up;
* constant scale s: up is multiplied by s.

Full deltas (``diff``, a bias's ``diff_b``, ``set_weight``) ride the same transforms as
factors ``up = D, down = I`` and are written back as one tensor of B's shape (ComfyUI's and
kohya's naming; diffusers and PEFT have no such tensors).

``--verify`` rebuilds ΔW on both sides and checks ``ΔW_B = T(ΔW_A)`` for every module, and
counts ΔW that lands nowhere in B as error.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from weightidx.compare.document import Report
from weightidx.compare.gather import compact, expand
from weightidx.compare.permutation import Permutation
from weightidx.compare.reads import whole_view
from weightidx.compare.report import read_report
from weightidx.compare.types import Transform
from weightidx.errors import LoraError, WeightidxError
from weightidx.fingerprint.sketch import view_2d
from weightidx.index.reader import IndexedModel
from weightidx.io.atomic import atomic_path
from weightidx.io.safetensors import ShardReader, TensorSpec, decode, open_checkpoint, write_safetensors
from weightidx.lora.dora import (
    MAGNITUDE,
    Magnitude,
    change,
    filled,
    key_suffix,
    read_magnitude,
    shape_problem,
    stored_shape,
)
from weightidx.lora.lycoris import PART as LYCORIS_PART
from weightidx.lora.lycoris import LycorisModule
from weightidx.lora.names import Resolved, Resolver
from weightidx.naming import lora_wrappers

FORMATS = ("comfyui", "kohya", "diffusers", "peft")
_DELTA = re.compile(r"^(?P<module>.+)\.(?P<kind>diff|diff_b|set_weight)$")
_FACTOR = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up|lora_mid)(?:\.default)?\.weight$"
)
_ALPHA = re.compile(r"^(?P<module>.+)\.alpha$")


@dataclass
class LoraModule:
    """One adapted weight: ``ΔW = scale · up @ down`` on ``target`` (a weight key of A; the
    module's name as written when ``unresolved`` says why no key fits)."""

    target: str
    down: np.ndarray  # (rank, *in dims)
    up: np.ndarray  # (out, rank, *1s)
    alpha: float | None
    dtype: str
    unresolved: str | None = None
    name: str = ""  # the module's name as the LoRA file writes it
    keys: tuple[str, ...] = ()  # the LoRA file's tensors this module is read from
    #: "lora", or a full delta written as such: "diff" (ΔW), "diff_b" (a bias's Δb) or
    #: "set_weight" (the new weight). A full delta D rides the same factor transforms as
    #: up = D, down = I (or up = I, down = D, whichever rank is smaller): T(D) is exact.
    kind: str = "lora"
    magnitude: Magnitude | None = None  # DoRA (``dora.py``)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the factors make a ΔW of a weight of ``shape`` (its 2-D view: up's rows, down's
        other dimensions)."""
        rows, cols = view_2d(shape)
        return self.up.shape[0] == rows and math.prod(self.down.shape[1:]) == cols

    def delta(self) -> np.ndarray:
        """ΔW in the 2-D view (out × rest), float64."""
        up = self.up.reshape(self.up.shape[0], self.rank).astype(np.float64)
        down = self.down.reshape(self.rank, -1).astype(np.float64)
        return self.scale * (up @ down)


@dataclass
class Conversion:
    """What ``convert_lora`` did, accounting for every tensor of the input: modules written
    (``converted``), modules and tensors not carried over with the reason (``refused``, each
    naming its ``tensors``), modules whose ΔW lands in B only in part (``partial``: the share of
    ΔW's norm lost), the metadata kept, and the check."""

    source_format: str
    output_format: str
    converted: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    partial: list[dict] = field(default_factory=list)
    metadata_kept: list[str] = field(default_factory=list)
    worst_relative_error: float | None = None
    input_modules: int = 0  # LoRA, LoKr/LoHa and full-delta modules read (fused ones write fewer)

    def as_json(self) -> dict:
        return {
            "source_format": self.source_format,
            "output_format": self.output_format,
            "input_modules": self.input_modules,
            "converted": self.converted,
            "refused": self.refused,
            "partial": self.partial,
            "metadata_kept": self.metadata_kept,
            "worst_relative_error": self.worst_relative_error,
        }


@dataclass
class LoraFile:
    """A LoRA file read: its format, its LoRA modules, its LoKr/LoHa modules, the tensors that
    are neither (each with its kind), and the file's metadata."""

    format: str
    modules: list[LoraModule]
    others: list[dict]
    metadata: dict[str, str]
    lycoris: list[LycorisModule] = field(default_factory=list)


def read_lora(path: Path | str, a_keys: set[str], forced: str | None = None) -> tuple[str, list[LoraModule]]:
    """Read a LoRA file in any supported format; module names are resolved against A's keys
    (``names.Resolver``). Returns the detected (or forced) format and the modules.

    Raises:
        LoraError: the file holds no LoRA factor at all.
    """
    found = read_lora_file(path, a_keys, forced)
    if not found.modules:
        raise LoraError(f"{path}: no LoRA factors found (keys like '<module>.lora_A.weight'); is it a LoRA?")
    return found.format, found.modules


def read_lora_file(
    path: Path | str, a_keys: set[str], forced: str | None = None, label: str = "A"
) -> LoraFile:
    """Every tensor of a LoRA file, accounted for: modules of LoRA factors (alpha attached),
    LoKr/LoHa modules, DoRA magnitudes attached to their module, and the other tensors with
    their kind (unknown, or a part whose module is incomplete).

    Raises:
        LoraError: an unknown ``forced`` format, an unreadable file or PEFT config.
    """
    path = Path(path)
    tensors, metadata = _load_all(path)
    fmt = forced or _detect(tensors)
    if fmt not in FORMATS:
        raise LoraError(f"--from-format {fmt}: use one of {', '.join(FORMATS)}")
    peft_alpha = _peft_alphas(path) if fmt == "peft" else {}
    resolver = Resolver(a_keys, label)
    found = _sorted_tensors(tensors)
    others = found.others
    modules = []
    for name, parts in found.lora.items():
        if "down" not in parts and "up" not in parts and name in found.lycoris:  # a LoKr/LoHa's alpha
            found.lycoris[name].alpha = _alpha_value(parts)
            found.lycoris[name].alpha_problem = _alpha_problem(parts)
            continue
        if "down" not in parts or "up" not in parts:
            if "down" not in parts and "up" not in parts:  # LoKr and LoHa modules carry an alpha too
                kind = "alpha of a module with no LoRA factors"
            else:
                kind = "LoRA factor without its " + (
                    "down (lora_A/lora_down)" if "down" not in parts else "up (lora_B/lora_up)"
                )
            others += [{"tensor": key, "kind": kind} for key in parts.get("keys", [])]
            continue
        alpha = peft_alpha.get(_strip(name), peft_alpha.get("*")) if fmt == "peft" else _alpha_value(parts)
        modules.append(_lora_module(name, parts, alpha, found.magnitudes.pop(name, None), resolver))  # type: ignore[arg-type]
    for name, kind, dtype, values in found.deltas:
        delta_module = _delta_module(resolver.resolve(name), name, kind, dtype, values, a_keys, label)
        if not np.isfinite(values).all():
            delta_module = replace(delta_module, unresolved="it holds NaN or infinite values")
        modules.append(replace(delta_module, keys=(f"{name}.{kind}",)))
    for module in found.lycoris.values():
        resolved = resolver.resolve(module.name)
        module.target, module.unresolved = resolved.key, resolved.reason
        if module.name in found.magnitudes:
            module.magnitude_key, magnitude_dtype, values = found.magnitudes.pop(module.name)
            if module.problem() is None:
                module.magnitude = read_magnitude(
                    values, magnitude_dtype, module.shape[0], module.magnitude_key
                )
    others += [
        {"tensor": key, "kind": "DoRA magnitude without its module's factors"}
        for key, _, _ in found.magnitudes.values()
    ]
    _refuse_second_modules(modules, list(found.lycoris.values()), label)
    return LoraFile(fmt, modules, others, metadata, list(found.lycoris.values()))


@dataclass
class _Sorted:
    """A LoRA file's tensors by what they are (``read_lora_file``)."""

    lora: dict[str, dict[str, object]]  # module -> down / up / mid / alpha / dtype / keys
    deltas: list[tuple[str, str, str, np.ndarray]]  # module, kind, dtype, values
    lycoris: dict[str, LycorisModule]
    magnitudes: dict[str, tuple[str, str, np.ndarray]]  # module -> key, dtype, values
    others: list[dict]


def _sorted_tensors(tensors: dict[str, tuple[str, np.ndarray]]) -> _Sorted:
    """Each tensor to its module and kind; a second tensor of a kind a module already has (both
    ``lora_A`` and ``lora_down``, say) is named as such, not written over the first."""
    found = _Sorted(defaultdict(dict), [], {}, {}, [])
    for key, (dtype, values) in tensors.items():
        factor, alpha = _FACTOR.match(key), _ALPHA.match(key)
        if magnitude := MAGNITUDE.match(key):
            found.magnitudes[magnitude["module"]] = (key, dtype, values)
        elif factor or alpha:
            module = (factor or alpha)["module"]  # type: ignore[index]
            kind = (
                {"lora_A": "down", "lora_down": "down", "lora_mid": "mid"}.get(factor["kind"], "up")
                if factor
                else "alpha"
            )
            parts = found.lora[module]
            if kind in parts:
                found.others.append({"tensor": key, "kind": f"second LoRA {kind} factor of one module"})
                continue
            parts[kind] = values
            if factor:
                parts["dtype"] = dtype
            parts.setdefault("keys", []).append(key)  # type: ignore[union-attr]
        elif delta := _DELTA.match(key):
            found.deltas.append((delta["module"], delta["kind"], dtype, values))
        elif part := LYCORIS_PART.match(key):
            kind = "lokr" if part["part"].startswith("lokr") else "loha"
            lycoris = found.lycoris.setdefault(
                part["module"], LycorisModule(kind, part["module"], dtype=dtype)
            )
            lycoris.parts[part["part"]] = values
        else:
            found.others.append({"tensor": key, "kind": "unknown"})
    return found


def _alpha_value(parts: dict[str, object]) -> float | None:
    """The module's alpha as a number (None when absent or malformed: ``_alpha_problem``)."""
    alpha = parts.get("alpha")
    if alpha is None or _alpha_problem(parts) is not None:
        return None
    return float(np.asarray(alpha).reshape(-1)[0])


def _alpha_problem(parts: dict[str, object]) -> str | None:
    alpha = parts.get("alpha")
    if alpha is None:
        return None
    values = np.asarray(alpha)
    if values.size != 1:
        return f"its alpha holds {values.size} values, not one"
    return None if np.isfinite(values).all() else "its alpha is NaN or infinite"


def _factor_problem(parts: dict[str, object]) -> str | None:
    """Why a module's LoRA factors do not make a ΔW (None when they do)."""
    down, up = np.asarray(parts["down"]), np.asarray(parts["up"])
    if down.ndim < 2 or up.ndim < 2:
        return f"factor shapes up {list(up.shape)} / down {list(down.shape)}: each needs 2 dimensions or more"
    if down.shape[0] == 0 or up.shape[1] != down.shape[0]:
        return (
            f"factor shapes up {list(up.shape)} / down {list(down.shape)} do not chain (rank {down.shape[0]})"
        )
    tensors = [down, up] + ([np.asarray(parts["mid"])] if "mid" in parts else [])
    if not all(np.isfinite(t).all() for t in tensors):
        return "its factors hold NaN or infinite values"
    return _alpha_problem(parts)


def _lora_module(
    name: str,
    parts: dict[str, object],
    alpha: float | None,
    magnitude_found: tuple[str, str, np.ndarray] | None,
    resolver: Resolver,
) -> LoraModule:
    """One LoRA module, with the reason it cannot be converted (``unresolved``) when its name
    fits no weight, its factors or alpha are malformed, or its DoRA magnitude is not finite."""
    resolved = resolver.resolve(name)
    keys = tuple(parts.get("keys", ()))  # type: ignore[arg-type]
    problem = _factor_problem(parts)
    down = np.asarray(parts["down"])
    if problem is None and "mid" in parts:  # LoCon's Tucker core folded into down: a plain LoRA
        down, problem = _with_mid(down, np.asarray(parts["mid"]))
    magnitude = None
    if magnitude_found is not None:
        magnitude_key, magnitude_dtype, values = magnitude_found
        keys += (magnitude_key,)
        if not np.isfinite(values).all():
            problem = problem or "its DoRA magnitude holds NaN or infinite values"
        elif problem is None:
            magnitude = read_magnitude(
                values, magnitude_dtype, int(np.asarray(parts["up"]).shape[0]), magnitude_key
            )
    return LoraModule(
        resolved.key or name,
        down,
        np.asarray(parts["up"]),
        alpha if problem is None else None,
        str(parts["dtype"]),
        resolved.reason or problem,
        name,
        keys,
        magnitude=magnitude,
    )


def _refuse_second_modules(modules: list[LoraModule], lycoris: list[LycorisModule], label: str) -> None:
    """Two modules of one file on one weight (two spellings of one module, say): a loader applies
    one of them, which one depends on the loader; the second is refused naming the first."""
    claimed: dict[tuple[str, str], str] = {}
    entries: list[LoraModule | LycorisModule] = [*modules, *lycoris]
    for module in entries:
        if module.unresolved is not None or module.target is None:
            continue
        slot = (module.target, "bias" if getattr(module, "kind", "") == "diff_b" else "weight")
        if slot in claimed:
            module.unresolved = (
                f"{label}'s weight {module.target} is adapted by {claimed[slot]} too, and a loader "
                "applies only one of them"
            )
        else:
            claimed[slot] = module.name


def _with_mid(down: np.ndarray, mid: np.ndarray) -> tuple[np.ndarray, str | None]:
    """LoCon's convolution in Tucker form (LyCORIS ``locon.py``; ComfyUI ``lora.py``): ``down``
    (r, in, 1, 1) and ``lora_mid`` (r, r, k, l) act as one down ``D[a, i, k, l] = Σ_b down[b, i]
    · mid[a, b, k, l]`` of shape (r, in, k, l); ``ΔW = up @ D`` is then a plain LoRA, exactly.
    Returns ``D``, or ``down`` and the reason the shapes do not chain."""
    flat = down.reshape(down.shape[0], -1).astype(np.float64)
    if mid.ndim != 4 or mid.shape[1] != flat.shape[0] or mid.shape[0] != flat.shape[0]:
        return (
            down,
            f"its LoCon middle factor of shape {list(mid.shape)} does not fit its down {list(down.shape)}",
        )
    return np.einsum("bi,abkl->aikl", flat, mid.astype(np.float64)), None


def _delta_module(
    resolved: Resolved,
    name: str,
    kind: str,
    dtype: str,
    values: np.ndarray,
    a_keys: set[str],
    label: str = "A",
) -> LoraModule:
    """A full delta as a module of factors (``LoraModule.kind``); a bias delta targets the bias
    beside the weight its name resolves to."""
    target, reason = resolved.key or name, resolved.reason
    if kind == "diff_b" and resolved.key is not None:
        target = resolved.key.removesuffix(".weight") + ".bias"
        if target not in a_keys:
            target, reason = name, f"{label}'s weight {resolved.key} has no bias"
    matrix = np.asarray(values, dtype=np.float64).reshape(view_2d(values.shape))
    rows, cols = matrix.shape
    if cols <= rows:
        up, down = matrix, np.eye(cols)
    else:
        up, down = np.eye(rows), matrix
    down = down.reshape(down.shape[0], *values.shape[1:]) if values.ndim > 1 else down
    return LoraModule(target, down, up, None, dtype, reason, name, kind=kind)


def _load_all(path: Path) -> tuple[dict[str, tuple[str, np.ndarray]], dict[str, str]]:
    checkpoint = open_checkpoint(path)
    tensors = {}
    with ShardReader() as reader:
        for tensor in checkpoint.tensors:
            if not tensor.supported:
                raise LoraError(
                    f"{path}: tensor '{tensor.key}' has dtype {tensor.dtype}, which weightidx cannot read"
                )
            raw = reader.read(tensor.path, tensor.begin, tensor.nbytes)
            tensors[tensor.key] = (tensor.dtype, decode(raw, tensor.dtype).reshape(tensor.shape))
    metadata = dict(checkpoint.shards[0].metadata or {}) if checkpoint.shards else {}
    return tensors, metadata


def _detect(tensors: dict) -> str:
    keys = list(tensors)
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(k.startswith("transformer.") for k in keys) and not any(k.endswith(".alpha") for k in keys):
        return "diffusers"
    return "comfyui"


def _strip(name: str) -> str:
    for wrapper in lora_wrappers():
        if name.startswith(wrapper):
            return name[len(wrapper) :]
    return name


def _peft_alphas(path: Path) -> dict[str, float]:
    """Each module's alpha from the PEFT ``adapter_config.json`` beside the file (``*``: all).

    Raises:
        LoraError: no config beside the file (the scale ``lora_alpha / r`` is only there), or
            one that cannot be read.
    """
    config = path.with_name("adapter_config.json")
    if not config.is_file():
        raise LoraError(
            f"{path}: a PEFT adapter without its adapter_config.json beside it, which holds its scale "
            "(lora_alpha / r); put the config beside it, or pass --from-format diffusers to read the "
            "factors at scale 1"
        )
    try:
        document = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraError(f"{config}: not a readable PEFT adapter config ({exc}); fix or remove it") from None
    if not isinstance(document, dict):
        raise LoraError(f"{config}: not a PEFT adapter config (a JSON object); fix or remove it")
    alphas = {"*": float(document["lora_alpha"])} if "lora_alpha" in document else {}
    for module, alpha in (document.get("alpha_pattern") or {}).items():
        alphas[module] = float(alpha)
    return alphas


def report_index(report: Report, side: str, report_path: Path | str) -> Path:
    """The index a report names for ``side``: where it was when the report was made, else a
    file of that name beside the report (the two moved together). Raises ``LoraError``."""
    recorded = Path(report["models"][side]["index"])
    beside = Path(report_path).parent / recorded.name
    for candidate in (recorded, beside):
        if candidate.is_file():
            return candidate
    raise LoraError(
        f"{report_path}: its index of model {side.upper()} is neither at {recorded} nor beside the report; "
        "put it back, or compare again"
    )


#: ``weights(side, key)``: the 2-D view of model ``side``'s ("a" or "b") weight, float64.
Weights = Callable[[str, str], np.ndarray]


def model_weights(reader: ShardReader, a: IndexedModel, b: IndexedModel) -> Weights:
    """Read A's and B's weights on demand (a DoRA module's change depends on its weight).

    The reader raises ``LoraError`` naming the file when a model's checkpoint is not where
    its index says."""

    def read(side: str, key: str) -> np.ndarray:
        model = a if side == "a" else b
        try:
            return whole_view(reader, model, key).astype(np.float64)
        except (OSError, WeightidxError) as exc:
            raise LoraError(
                f"{model.root / model.rows[key]['shard']}: model {side.upper()}'s weights are needed for "
                f"its DoRA modules and cannot be read ({exc}); put the checkpoint back"
            ) from None

    return read


@dataclass(frozen=True)
class Target:
    """Where one A weight (or a slice of it) went in B."""

    a_key: str
    a_slice: tuple[int, int, int] | None
    b_key: str
    b_slice: tuple[int, int, int] | None
    transform: tuple[Transform, ...]
    verdict: str
    scale: float
    permutation: Permutation | None = None  # B's rows or columns are A's reordered
    rows: np.ndarray | None = None  # B's rows are these rows of A (a pruned model's selection)
    cols: np.ndarray | None = None  # B's columns are these columns of A

    def has(self, kind: str) -> bool:
        """Whether one of the steps is of ``kind`` (``Transform.KINDS``)."""
        return any(step.kind == kind for step in self.transform)

    @property
    def takes(self) -> list[tuple[int, np.ndarray | slice]]:
        """The rows (axis 0) or columns (1) of A's 2-D view B's weight holds, step by step, in A's
        axes: the reordering, A's slice (A fused, B one part of it), the selected rows, the
        selected columns (B pruned). Every follower of the transform (factors, ΔW, a DoRA
        magnitude, LoKr/LoHa factors) takes them in this order."""
        steps: list[tuple[int, np.ndarray | slice]] = []
        if self.permutation is not None:
            steps.append((self.permutation.axis, self.permutation.order))
        if self.a_slice is not None:
            axis, start, stop = self.a_slice
            steps.append((axis, slice(start, stop)))
        if self.rows is not None:
            steps.append((0, self.rows))
        if self.cols is not None:
            steps.append((1, self.cols))
        return steps


def _taken(values: np.ndarray, axis: int, index: np.ndarray | slice) -> np.ndarray:
    return values[index] if axis == 0 else values[:, index]


def _by_a(targets: list[Target], related_only: bool = False) -> dict[str, list[Target]]:
    """The targets of each A weight (``related_only``: leaving out those judged ``different``)."""
    found: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        if not related_only or target.verdict != "different":
            found[target.a_key].append(target)
    return found


def mapping_from_report(report: Report) -> list[Target]:
    """The A -> B targets of every match in a compare report (any verdict)."""

    def slice_of(region: dict) -> tuple[int, int, int] | None:
        s = region["slice"]
        return None if s is None else (s["axis"], s["start"], s["stop"])

    targets = []
    for match in report["matches"]:
        try:
            steps = tuple(Transform.parse(step) for step in match["transform"])
        except ValueError as exc:
            raise LoraError(
                f"a match of the report names {exc}; make the report with this weightidx"
            ) from None
        scale = math.prod(step.factor for step in steps)
        found = match.get("permutation")
        select = match.get("select") or {}
        targets.append(
            Target(
                match["a"]["key"],
                slice_of(match["a"]),
                match["b"]["key"],
                slice_of(match["b"]),
                steps,
                match["verdict"],
                scale,
                None
                if found is None
                else Permutation(
                    int(found["axis"]), np.asarray(found["order"]), found["one_to_one"], found["moved"]
                ),
                None if select.get("rows") is None else expand(select["rows"]),
                None if select.get("cols") is None else expand(select["cols"]),
            )
        )
    return targets


def export_mapping(report: Report) -> list[dict]:
    """A key -> B key (+ slices, transform and reordering) for other tools, from a compare report."""
    return [
        {
            "a": t.a_key,
            "a_slice": None
            if t.a_slice is None
            else dict(zip(("axis", "start", "stop"), t.a_slice, strict=True)),
            "b": t.b_key,
            "b_slice": None
            if t.b_slice is None
            else dict(zip(("axis", "start", "stop"), t.b_slice, strict=True)),
            "transform": [str(step) for step in t.transform],
            "verdict": t.verdict,
            "permutation": None
            if t.permutation is None
            else {"axis": t.permutation.axis, "order": t.permutation.order.tolist()},
            "select": None
            if t.rows is None and t.cols is None
            else {
                "rows": None if t.rows is None else compact(t.rows),
                "cols": None if t.cols is None else compact(t.cols),
            },
        }
        for t in mapping_from_report(report)
        if t.verdict != "different"
    ]


@dataclass
class _Planned:
    """One output module and how to check it: ΔW_B should equal ``expected()``."""

    module: LoraModule
    sources: list[tuple[LoraModule, Target]]


def convert_modules(
    modules: list[LoraModule],
    targets: list[Target],
    a_shapes: dict[str, tuple],
    b_shapes: dict[str, tuple],
    weights: Weights | None = None,
) -> tuple[list[_Planned], list[dict]]:
    """Map each A module through its targets; returns the B modules and the refusals.
    ``weights`` reads B's weights for DoRA modules fused with others (``dora.filled``)."""
    by_a = _by_a(targets)
    fused: dict[str, list[tuple[LoraModule, Target]]] = defaultdict(list)
    planned: list[_Planned] = []
    refused: list[dict] = []
    for module in modules:
        reason = _refusal(module, by_a.get(module.target, []), a_shapes)
        if reason:
            refused.append({"module": module.target, "tensors": list(module.keys), "reason": reason})
            continue
        for target in by_a[module.target]:
            if target.b_slice is not None:  # LoRA factors and full deltas fuse apart
                fused[f"{target.b_key}\0{module.kind}"].append((module, target))
            else:
                planned.append(_Planned(_move(module, target, b_shapes[target.b_key]), [(module, target)]))
    for slot, parts in fused.items():
        planned.append(_Planned(_fuse(parts, b_shapes[slot.split("\0")[0]], weights), parts))
    return planned, refused


def _dora_problem(
    magnitude: Magnitude,
    targets: list[Target],
    a_shape: tuple,
    b_shapes: dict[str, tuple],
    fmt: str,
) -> str | None:
    """Why a DoRA magnitude cannot follow the targets exactly (``dora.py``), None when it can."""
    problem = shape_problem(magnitude, a_shape, view_2d(a_shape))
    if problem is not None:
        return problem
    across = "rows" if magnitude.axis == 1 else "columns"
    for target in targets:
        if target.verdict == "different":
            continue
        b_axis = 1 - magnitude.axis if target.has("transpose") else magnitude.axis
        if target.a_slice is not None and target.a_slice[0] != magnitude.axis:
            return f"B holds a slice of A's {across}, which changes the norms its magnitude divides by"
        if (target.rows is not None and magnitude.axis != 0) or (
            target.cols is not None and magnitude.axis != 1
        ):
            return f"B keeps a selection of A's {across}, which changes the norms its magnitude divides by"
        if target.b_slice is not None and target.b_slice[0] != b_axis:
            return f"B's weight joins it with other {across}, which mixes the norms its magnitude divides by"
        if b_axis == 1 and len(b_shapes[target.b_key]) > 2:
            return "on B it would be a magnitude per input channel of a convolution"
        if b_axis == 1 and fmt in ("peft", "diffusers"):
            return f"on B's transposed weight it is per column; {fmt} stores magnitudes per output row only"
    return None


def plan_dora(
    modules: list[LoraModule],
    targets: list[Target],
    shapes: tuple[dict[str, tuple], dict[str, tuple]],
    fmt: str,
    allow_full_delta: bool,
    weights: Weights,
) -> tuple[list[LoraModule], list[dict]]:
    """DoRA modules whose magnitude cannot follow the transform: their exact change
    ``W'_A − W_A`` as a full delta when allowed (read from A's weight), else refused. The other
    modules are returned as they are."""
    a_shapes, b_shapes = shapes
    by_a = _by_a(targets)
    kept, refused = [], []
    for module in modules:
        magnitude = module.magnitude
        mine = by_a.get(module.target, [])
        if magnitude is None or module.unresolved or module.target not in a_shapes or not mine:
            kept.append(module)
            continue
        if not module.fits(a_shapes[module.target]):
            kept.append(module)  # refused by ``_refusal``, naming the shapes
            continue
        wrong = shape_problem(magnitude, a_shapes[module.target], view_2d(a_shapes[module.target]))
        if wrong is not None:  # no change can be computed from it: refused, no full delta offered
            refused.append(
                {"module": module.target, "tensors": list(module.keys), "reason": f"DoRA: {wrong}"}
            )
            continue
        problem = _dora_problem(magnitude, mine, a_shapes[module.target], b_shapes, fmt)
        if problem is None:
            kept.append(module)
        elif allow_full_delta and fmt in ("comfyui", "kohya"):
            shape = a_shapes[module.target]
            values = change(weights("a", module.target), module.delta(), magnitude).reshape(shape)
            full = _delta_module(
                Resolved(module.target), module.name, "diff", module.dtype, values, set(a_shapes)
            )
            kept.append(replace(full, keys=module.keys))
        else:
            suffix = (
                "; --allow-full-delta writes its exact change as a full delta"
                if fmt in ("comfyui", "kohya")
                else ""
            )
            refused.append(
                {"module": module.target, "tensors": list(module.keys), "reason": f"DoRA: {problem}{suffix}"}
            )
    return kept, refused


def _refusal(module: LoraModule, targets: list[Target], a_shapes: dict[str, tuple]) -> str | None:
    if module.unresolved is not None:
        return module.unresolved
    if module.target not in a_shapes:
        return "no weight of A has this name"
    if not targets:
        return "the report matches this weight to nothing in B"
    permuted = [t for t in targets if t.has("permute")]
    if any(t.permutation is None or t.a_slice or t.b_slice or t.has("transpose") for t in permuted):
        return "its B weight is a reordered slice or transpose of it, which LoRA conversion does not handle"
    if all(t.verdict == "different" for t in targets):
        return "its match in B is 'different' (the values did not confirm a relation): not carried over"
    if not module.fits(a_shapes[module.target]):
        return (
            f"factor shapes up {list(module.up.shape)} / down {list(module.down.shape)} "
            f"do not fit A's weight {list(a_shapes[module.target])}"
        )
    if (module.kind == "lora" and len(a_shapes[module.target]) < 2) or any(
        t.has("transpose") and t.b_slice for t in targets
    ):
        return "only 2-D and convolution weights are supported"
    return None


def _factors(module: LoraModule) -> tuple[np.ndarray, np.ndarray]:
    """(up 2-D, down 2-D) in float64."""
    return (
        module.up.reshape(module.up.shape[0], module.rank).astype(np.float64),
        module.down.reshape(module.rank, -1).astype(np.float64),
    )


def _shaped(up: np.ndarray, down: np.ndarray, b_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Give 2-D factors B's layout: conv weights keep their kernel dims on down, 1s on up."""
    rank = up.shape[1]
    extra = len(b_shape) - 2
    return up.reshape(up.shape[0], rank, *([1] * extra)), down.reshape(rank, *b_shape[1:])


def _move(module: LoraModule, target: Target, b_shape: tuple) -> LoraModule:
    up, down = _factors(module)
    up, down = _selected(up * target.scale, down, target)
    if target.has("transpose"):
        up, down = down.T, up.T
    up, down = _shaped(up, down, b_shape)
    magnitude = None if module.magnitude is None else _followed(module.magnitude, target)
    if magnitude is not None and target.has("transpose"):
        magnitude = magnitude.transposed()
    return LoraModule(
        target.b_key, down, up, module.alpha, module.dtype, kind=module.kind, magnitude=magnitude
    )


def _followed(magnitude: Magnitude, target: Target) -> Magnitude:
    """A DoRA magnitude through the target's scale, reordering, slice of A and selection, in
    A's axes (``dora.py``; a transpose is the caller's)."""
    magnitude = magnitude.scaled(target.scale)
    for axis, index in target.takes:
        magnitude = magnitude.taken(axis, index)
    return magnitude


def _selected(up: np.ndarray, down: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """The factors of the part of ΔW that lands in B (``Target.takes``): ΔW's rows are up's and
    its columns down's, so each step takes rows of up or columns of down, exactly."""
    for axis, index in target.takes:
        up, down = (_taken(up, 0, index), down) if axis == 0 else (up, _taken(down, 1, index))
    return up, down


def _fuse(
    parts: list[tuple[LoraModule, Target]], b_shape: tuple, weights: Weights | None = None
) -> LoraModule:
    """Several A modules (or several pieces of one: heads interleaved) into slices of one B
    weight: one module whose rank is the sum of the A modules' ranks. Each A module keeps one
    rank block; its pieces scatter its up rows (or down columns) into B's slices. DoRA
    magnitudes are placed the same way and the rest completed from B's weight (``weights``)."""
    rows, cols = view_2d(b_shape)
    by_module: dict[int, list[tuple[LoraModule, Target]]] = defaultdict(list)
    for module, target in parts:
        by_module[id(module)].append((module, target))
    total = sum(pieces[0][0].rank for pieces in by_module.values())
    up, down = np.zeros((rows, total)), np.zeros((total, cols))
    offset = 0
    for pieces in by_module.values():
        module = pieces[0][0]
        block = slice(offset, offset + module.rank)
        for _, target in pieces:
            part_up, part_down = _factors(module)
            part_up, part_down = _selected(part_up * (module.scale * target.scale), part_down, target)
            axis, start, stop = target.b_slice
            if axis == 0:
                up[start:stop, block] = part_up
                down[block] = part_down
            else:
                up[:, block] = part_up
                down[block, start:stop] = part_down
        offset += module.rank
    magnitude = _fused_magnitude(parts, (rows, cols), up @ down, weights)
    up, down = _shaped(up, down, b_shape)
    return LoraModule(
        parts[0][1].b_key,
        down,
        up,
        float(total),
        parts[0][0].dtype,
        kind=parts[0][0].kind,
        magnitude=magnitude,
    )


def _fused_magnitude(
    parts: list[tuple[LoraModule, Target]], view: tuple[int, int], delta: np.ndarray, weights: Weights | None
) -> Magnitude | None:
    """The DoRA magnitude of a fused B module: each part's along B's slices, the rest the norms
    of ``W_B + ΔW_B`` so those rows stay as they are (``dora.filled``); ``_dora_problem`` has
    refused slices across the norms."""
    with_magnitude = [(m, t) for m, t in parts if m.magnitude is not None]
    if not with_magnitude:
        return None
    first = with_magnitude[0][0].magnitude
    assert first is not None and weights is not None
    values = np.full(view[first.axis], np.nan)
    for module, target in with_magnitude:
        assert module.magnitude is not None and target.b_slice is not None
        _, start, stop = target.b_slice
        values[start:stop] = _followed(module.magnitude, target).values
    b_key = parts[0][1].b_key
    # The norms that leave the other rows unchanged hold only in full precision (bf16 would move
    # those rows by 0.3 %): a completed magnitude is written as F32.
    dtype = first.dtype if not np.isnan(values).any() else "F32"
    return Magnitude(filled(values, first.axis, weights("b", b_key), delta), first.axis, dtype)


def through(delta: np.ndarray, target: Target) -> np.ndarray:
    """T applied to a change of A's weight (2-D view): the scale, the reordering, A's slice, the
    selection and the transpose, in that order (B's slice is the caller's)."""
    delta = delta * target.scale
    for axis, index in target.takes:
        delta = _taken(delta, axis, index)
    return delta.T if target.has("transpose") else delta


def expected_delta(
    plan: _Planned, b_shape: tuple, change_of: Callable[[LoraModule], np.ndarray] | None = None
) -> np.ndarray:
    """T(ΔW_A) in B's 2-D view: what the converted module must reproduce. ``change_of`` gives
    each A module's change of its weight (``ΔW`` unless given: DoRA's ``W' − W``)."""
    rows, cols = view_2d(b_shape)
    expected = np.zeros((rows, cols))
    for module, target in plan.sources:
        delta = through(module.delta() if change_of is None else change_of(module), target)
        if target.b_slice is None:
            expected += delta.reshape(rows, cols)
        elif target.b_slice[0] == 0:
            expected[target.b_slice[1] : target.b_slice[2]] += delta
        else:
            expected[:, target.b_slice[1] : target.b_slice[2]] += delta
    return expected


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    norm = float(np.linalg.norm(expected))
    difference = float(np.linalg.norm(actual - expected))
    return difference / norm if norm > 0 else difference


def _module_name(weight_key: str) -> str:
    return weight_key[: -len(".weight")] if weight_key.endswith(".weight") else weight_key


#: What each output format's loader puts in front of a module name: a B key that already carries
#: it (a checkpoint saved with ComfyUI's ``model.diffusion_model.``) must not get it twice.
_LOADER_WRAPPERS = {
    "comfyui": ("model.diffusion_model.", "diffusion_model."),
    "kohya": ("model.diffusion_model.", "diffusion_model."),
    "diffusers": ("transformer.",),
    "peft": ("base_model.model.",),
}


def _unwrapped(name: str, fmt: str) -> str:
    for wrapper in _LOADER_WRAPPERS[fmt]:
        if name.startswith(wrapper):
            return name[len(wrapper) :]
    return name


def _prefix(stem: str, fmt: str) -> str:
    """The key prefix of B's module ``stem`` in ``fmt``: kohya's ``lora_unet_`` with ``_`` for
    ``.``, else the format's loader wrapper (once: ``_unwrapped``)."""
    name = _unwrapped(stem, fmt)
    if fmt == "kohya":
        return f"lora_unet_{name.replace('.', '_')}"
    return {"comfyui": "diffusion_model.", "diffusers": "transformer.", "peft": "base_model.model."}[
        fmt
    ] + name


def lora_tensors(
    modules: list[LoraModule], fmt: str, shapes: dict[str, tuple] | None = None
) -> tuple[list[TensorSpec], dict | None]:
    """Tensors to write in ``fmt``'s key style, and a PEFT adapter config when ``fmt`` is peft;
    ``shapes`` (B's) gives full deltas their tensor's shape."""
    specs: list[TensorSpec] = []
    config: dict | None = None
    for module in modules:
        if module.kind != "lora":
            specs.append(_delta_spec(module, fmt, (shapes or {})[module.target]))
            continue
        prefix = _prefix(_module_name(module.target), fmt)
        up, down, alpha = module.up, module.down, module.alpha
        if fmt in ("diffusers", "peft"):  # these formats carry no alpha: fold the scale into up
            up, alpha = up * module.scale, None
        if fmt == "kohya":
            down_key, up_key = "lora_down.weight", "lora_up.weight"
        else:
            down_key, up_key = "lora_A.weight", "lora_B.weight"
        specs.append(TensorSpec(f"{prefix}.{down_key}", module.dtype, tuple(down.shape), lambda v=down: v))
        specs.append(TensorSpec(f"{prefix}.{up_key}", module.dtype, tuple(up.shape), lambda v=up: v))
        if alpha is not None:
            specs.append(
                TensorSpec(f"{prefix}.alpha", "F32", (), lambda a=alpha: np.array(a, dtype=np.float32))
            )
        if module.magnitude is not None:
            specs.append(_magnitude_spec(prefix, module.magnitude, down.ndim, fmt))
    if fmt == "peft":
        ranks = {_unwrapped(_module_name(m.target), fmt): m.rank for m in modules}
        base = min(ranks.values()) if ranks else 1
        config = {
            "peft_type": "LORA",
            "r": base,
            "lora_alpha": base,
            "rank_pattern": ranks,
            "alpha_pattern": dict(ranks),
            "target_modules": sorted(ranks),
        }
        if any(m.magnitude is not None for m in modules):
            config["use_dora"] = True
    return specs, config


def _one_patch_per_weight(
    planned: list[_Planned], b_shapes: dict[str, tuple], weights: Weights
) -> list[_Planned]:
    """A B weight given both LoRA factors and a full delta (parts of a fused weight, one a LoKr
    written as ``diff``) gets one full delta, their sum: ComfyUI keeps one patch per weight
    (``comfy/lora.py``: a ``diff`` replaces the LoRA patch of its key), so two would lose one."""
    by_weight: dict[str, list[_Planned]] = defaultdict(list)
    for plan in planned:
        by_weight[plan.module.target].append(plan)
    merged = []
    for target, plans in by_weight.items():
        kinds = {plan.module.kind for plan in plans}
        if not ({"lora", "diff"} <= kinds and kinds <= {"lora", "diff"}):
            merged += plans
            continue
        total = np.zeros(view_2d(b_shapes[target]))
        for plan in plans:
            delta = plan.module.delta()
            if plan.module.magnitude is not None:  # what it does to B's weight, DoRA included
                delta = change(weights("b", target), delta, plan.module.magnitude)
            total += delta
        first = plans[0].module
        values = total.reshape(b_shapes[target])
        full = _delta_module(Resolved(target), target, "diff", first.dtype, values, {target})
        merged.append(_Planned(full, [source for plan in plans for source in plan.sources]))
    return merged


def _all_dora(planned: list[_Planned], fmt: str, b_shapes: dict[str, tuple], weights: Weights) -> None:
    """PEFT and diffusers make every module of an adapter DoRA or none: when some are, the
    others get the magnitude that leaves them plain LoRA, the row norms of ``W_B + ΔW_B``
    (``dora.filled``; read from B's weights)."""
    if fmt not in ("peft", "diffusers") or all(p.module.magnitude is None for p in planned):
        return
    for plan in planned:
        module = plan.module
        if module.magnitude is None and module.kind == "lora":
            rows = view_2d(b_shapes[module.target])[0]
            values = filled(np.full(rows, np.nan), 0, weights("b", module.target), module.delta())
            module.magnitude = Magnitude(values, 0, "F32")


def convert_lora(
    lora: Path | str,
    report_path: Path | str,
    out: Path | str,
    *,
    output_format: str | None = None,
    source_format: str | None = None,
    verify: bool = False,
    strict: bool = False,
    allow_full_delta: bool = False,
) -> Conversion:
    """Convert a LoRA for model A into model B's key space using ``weightidx compare A B -o report``.

    ``allow_full_delta``: a LoKr/LoHa module whose target its factors cannot follow (a slice of a
    fused tensor, a reordering, a selection) is written as its exact full delta (``diff``).

    Writes ``out`` (safetensors, atomically), ``out`` + ``.conversion.json`` (what was converted
    and what was refused, with reasons) and, for PEFT, ``adapter_config.json`` beside ``out``.
    """
    from weightidx.index.reader import load_index

    if Path(out).resolve() == Path(lora).resolve():
        raise LoraError(f"{out}: this is the LoRA being converted; write the output to another file")
    report = read_report(report_path)
    a = load_index(report_index(report, "a", report_path))
    b = load_index(report_index(report, "b", report_path))
    for model in (a, b):
        stale = model.stale_shards()
        if stale:
            raise LoraError(
                f"{stale[0]}: changed after the report was made; run `weightidx compare --reindex` again"
            )
    a_shapes = {k: tuple(r["shape"]) for k, r in a.rows.items()}
    read = read_lora_file(lora, set(a_shapes), source_format)
    fmt_out = output_format or read.format
    if fmt_out not in FORMATS:
        raise LoraError(f"--format {fmt_out}: use one of {', '.join(FORMATS)}")
    with ShardReader() as reader:
        return _convert(
            read,
            mapping_from_report(report),
            (a, b),
            model_weights(reader, a, b),
            (Path(lora), Path(report_path), Path(out)),
            fmt_out,
            verify=verify,
            strict=strict,
            allow_full_delta=allow_full_delta,
        )


def _convert(
    read: LoraFile,
    targets: list[Target],
    models: tuple[IndexedModel, IndexedModel],
    weights: Weights,
    paths: tuple[Path, Path, Path],
    fmt_out: str,
    *,
    verify: bool,
    strict: bool,
    allow_full_delta: bool,
) -> Conversion:
    """``convert_lora`` once the inputs are read: plan, account, check and write."""
    a, b = models
    lora, report_path, out = paths
    a_shapes = {k: tuple(r["shape"]) for k, r in a.rows.items()}
    b_shapes = {k: tuple(r["shape"]) for k, r in b.rows.items()}
    fmt_in = read.format
    modules, dora_refused = plan_dora(
        read.modules, targets, (a_shapes, b_shapes), fmt_out, allow_full_delta, weights
    )
    if fmt_out in ("diffusers", "peft"):  # their loaders read LoRA factors only
        reason = f"a full delta ({{}}): the {fmt_out} format has none; use --format comfyui or kohya"
        modules = [
            m if m.kind == "lora" or m.unresolved else replace(m, unresolved=reason.format(m.kind))
            for m in modules
        ]
    carried, full, lycoris_refused = plan_lycoris(
        read.lycoris, targets, (a_shapes, b_shapes), fmt_out, allow_full_delta, weights
    )
    modules = modules + full
    planned, refused = convert_modules(modules, targets, a_shapes, b_shapes, weights)
    planned = _one_patch_per_weight(planned, b_shapes, weights)
    _all_dora(planned, fmt_out, b_shapes, weights)
    refused += dora_refused + lycoris_refused
    refused += [
        {"module": other["tensor"], "tensors": [other["tensor"]], "reason": _other_reason(other["kind"])}
        for other in read.others
    ]
    partial = lost_parts(modules, targets, a_shapes, {r["module"] for r in refused})
    if strict and (refused or partial):
        first = refused[0] if refused else {"module": partial[0]["module"], "reason": partial[0]["reason"]}
        raise LoraError(
            f"{len(refused) + len(partial)} module(s) or tensor(s) cannot be converted whole (--strict), "
            f"e.g. {first['module']}: {first['reason']}; nothing was written"
        )
    if not planned and not carried:
        raise LoraError(
            f"{lora}: no module could be converted "
            f"({refused[0]['module'] + ': ' + refused[0]['reason'] if refused else 'empty'})"
        )
    conversion = Conversion(
        fmt_in, fmt_out, refused=refused, partial=partial, input_modules=len(read.modules) + len(read.lycoris)
    )
    for plan in planned:
        conversion.converted.append(
            {
                "b": plan.module.target,
                "from": [
                    {
                        "a": t.a_key,
                        "a_slice": t.a_slice,
                        "b_slice": t.b_slice,
                        "transform": [str(x) for x in t.transform],
                    }
                    for _, t in plan.sources
                ],
                "kind": plan.module.kind,
                "rank": plan.module.rank if plan.module.kind == "lora" else None,
            }
        )
    for source, moved, target in carried:
        conversion.converted.append(
            {
                "b": moved.target,
                "kind": moved.kind,
                "from": [
                    {
                        "a": source.target,
                        "a_slice": None,
                        "b_slice": None,
                        "transform": [str(x) for x in target.transform],
                    }
                ],
                "rank": None,
            }
        )
    if verify:  # against the whole of T(ΔW_A): what landed nowhere in B counts as error too
        conversion.worst_relative_error = max(
            [_plan_error(p, b_shapes[p.module.target], weights) for p in planned]
            + [_carried_error(source, moved, target, weights) for source, moved, target in carried]
            + [part["lost_share"] for part in partial]
        )
    kept = {k: v for k, v in read.metadata.items() if not k.startswith("weightidx_")}
    conversion.metadata_kept = sorted(kept)
    _write(
        Path(out),
        [p.module for p in planned],
        fmt_out,
        conversion,
        {
            **kept,
            "weightidx_source_lora": Path(lora).name,  # names, not paths: files get published
            "weightidx_source_lora_sha256": _sha256(Path(lora)),
            "weightidx_report": Path(report_path).name,
            "weightidx_model_a": a.name,
            "weightidx_model_b": b.name,
            "weightidx_format": fmt_out,
        },
        b_shapes,
        [moved for _, moved, _ in carried],
    )
    return conversion


#: Transforms LoKr/LoHa factors follow as factors (``lycoris.py``): a reshape keeps the 2-D
#: view; reorderings, selections and slices of A go through ``LycorisModule.taken`` where it can.
_FACTOR_PRESERVING = {
    "rename", "cast", "scale", "transpose", "quantise", "reshape", "permute", "select", "gather", "split",
}  # fmt: skip


def _lycoris_moved(module: LycorisModule, target: Target, a_shape: tuple) -> LycorisModule | None:
    """The LoKr/LoHa module on ``target``'s B weight as factors, exactly, or None when its
    factors cannot follow (a slice of a fused B weight, a kernel transposed, a reordering or
    selection that is not a Kronecker product's: ``LycorisModule.taken``)."""
    kinds = {step.kind for step in target.transform}
    convolution = module.convolution or len(a_shape) > 2
    if (
        target.b_slice is not None
        or not kinds <= _FACTOR_PRESERVING
        or (convolution and "transpose" in kinds)
    ):
        return None
    current: LycorisModule | None = module
    for axis, index in target.takes:
        current = current.taken(axis, index) if current is not None else None
    if current is None:
        return None
    return current.moved(target.b_key, target.scale, target.has("transpose"))


def plan_lycoris(
    found: list[LycorisModule],
    targets: list[Target],
    shapes: tuple[dict[str, tuple], dict[str, tuple]],
    fmt: str,
    allow_full_delta: bool,
    weights: Weights,
) -> tuple[list[tuple[LycorisModule, LycorisModule, Target]], list[LoraModule], list[dict]]:
    """LoKr/LoHa modules: (source, moved, target) for those whose factors (and DoRA magnitude)
    follow the transform exactly (``lycoris.py``), full deltas of their exact change for the
    others when allowed (``weights`` reads A's weight for a DoRA module), refusals for the rest."""
    a_shapes, b_shapes = shapes
    by_a = _by_a(targets, related_only=True)
    kept, full, refused = [], [], []
    for module in found:
        tensors = [f"{module.name}.{part}" for part in module.parts] + (
            [f"{module.name}.alpha"] if module.alpha is not None else []
        )
        tensors += [module.magnitude_key] if module.magnitude_key else []
        reason = module.problem() or module.unresolved
        mine = by_a.get(module.target or "", [])
        if reason is None and not mine:
            reason = "the report matches this weight to nothing in B"
        if reason is None and module.target is not None and len(a_shapes[module.target]) < 2:
            reason = f"{module.label} on a 1-D weight is not converted"
        if reason is None and module.shape != view_2d(a_shapes[module.target or ""]):
            reason = f"{module.label} factors do not fit A's weight {list(a_shapes[module.target or ''])}"
        if reason is None and module.magnitude is not None:
            problem = shape_problem(module.magnitude, a_shapes[module.target or ""], module.shape)
            reason = None if problem is None else f"DoRA: {problem}"
        target_key = module.target or ""
        if reason is None and fmt not in ("comfyui", "kohya"):
            reason = f"{module.label}: the {fmt} format has no LoKr/LoHa modules or full deltas"
        if reason is None:
            moves = [_lycoris_moved(module, target, a_shapes[target_key]) for target in mine]
            carried_ok = all(moved is not None for moved in moves)
            dora = None
            if carried_ok and module.magnitude is not None:
                dora = _dora_problem(module.magnitude, mine, a_shapes[target_key], b_shapes, fmt)
                carried_ok = dora is None
            if carried_ok:
                kept += [(module, moved, target) for moved, target in zip(moves, mine, strict=True) if moved]
                continue
            if allow_full_delta:
                values = module.delta()
                if module.magnitude is not None:  # the change DoRA makes depends on A's weight
                    values = change(weights("a", target_key), values, module.magnitude)
                values = values.reshape(a_shapes[target_key])
                delta = _delta_module(
                    Resolved(target_key), module.name, "diff", module.dtype, values, set(a_shapes)
                )
                full.append(replace(delta, keys=tuple(tensors)))
                continue
            steps = ", ".join(sorted({str(t) for target in mine for t in target.transform} - {"rename"}))
            followed = steps or "a slice of a fused weight"
            cannot = (
                f"DoRA: {dora}" if dora is not None else f"{module.label} cannot follow {followed} as factors"
            )
            reason = f"{cannot}; --allow-full-delta writes it as a full delta"
        refused.append({"module": module.target or module.name, "tensors": tensors, "reason": reason})
    return kept, full, refused


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as a file of ``dtype`` will hold them."""
    from weightidx.io.safetensors import encode

    return decode(encode(values, dtype), dtype).reshape(values.shape)


def _stored_magnitude(magnitude: Magnitude | None) -> Magnitude | None:
    if magnitude is None:
        return None
    return replace(magnitude, values=_stored(magnitude.values, magnitude.dtype).astype(np.float64))


def _lycoris_as_written(module: LycorisModule) -> LycorisModule:
    parts = {n: _stored(v, module.dtype) for n, v in module.parts.items()}
    return LycorisModule(
        module.kind,
        module.name,
        parts,
        module.alpha,
        module.dtype,
        module.target,
        magnitude=_stored_magnitude(module.magnitude),
    )


def _carried_error(source: LycorisModule, moved: LycorisModule, target: Target, weights: Weights) -> float:
    """The relative error of a carried LoKr/LoHa module: its change of B's weight against
    T(its change of A's), as written (DoRA's change read from both weights)."""
    written = _lycoris_as_written(moved)
    if source.magnitude is None:
        expected, actual = source.delta(), written.delta()
    else:
        weight_a, weight_b = weights("a", source.target or ""), weights("b", moved.target or "")
        expected = change(weight_a, source.delta(), source.magnitude)
        actual = change(weight_b, written.delta(), written.magnitude)
    return relative_error(actual, through(expected, target))


def _plan_error(plan: _Planned, b_shape: tuple, weights: Weights) -> float:
    """The relative error of a planned module as written against T(ΔW_A) (module doc); a DoRA
    module's change of the weight is compared, read from A's and B's weights."""
    written = _as_written(plan.module)
    if written.magnitude is None and all(m.magnitude is None for m, _ in plan.sources):
        return relative_error(written.delta(), expected_delta(plan, b_shape))
    weight_b = weights("b", plan.module.target)
    actual = change(weight_b, written.delta(), written.magnitude)

    def change_of(module: LoraModule) -> np.ndarray:
        if module.magnitude is None:
            return module.delta()
        return change(weights("a", module.target), module.delta(), module.magnitude)

    return relative_error(actual, expected_delta(plan, b_shape, change_of))


def _magnitude_spec(prefix: str, magnitude: Magnitude, weight_ndim: int, fmt: str) -> TensorSpec:
    shape = stored_shape(magnitude, weight_ndim, fmt)
    values = magnitude.values.reshape(shape)
    return TensorSpec(f"{prefix}.{key_suffix(fmt)}", magnitude.dtype, shape, lambda v=values: v)


def _lycoris_specs(module: LycorisModule, fmt: str) -> list[TensorSpec]:
    prefix = _prefix(_module_name(module.target or module.name), fmt)
    specs = [
        TensorSpec(f"{prefix}.{part}", module.dtype, tuple(values.shape), lambda v=values: v)
        for part, values in module.parts.items()
    ]
    if module.alpha is not None:
        specs.append(
            TensorSpec(f"{prefix}.alpha", "F32", (), lambda a=module.alpha: np.array(a, dtype=np.float32))
        )
    if module.magnitude is not None:
        specs.append(_magnitude_spec(prefix, module.magnitude, 2, fmt))
    return specs


def _other_reason(kind: str) -> str:
    """The refusal of a tensor that belongs to no module: unknown, or a part without the rest of
    its module (a factor without the other, an alpha or a DoRA magnitude without factors)."""
    if kind == "unknown":
        return "not a LoRA factor, alpha or adapter tensor weightidx knows; not converted"
    return f"{'an' if kind.startswith('alpha') else 'a'} {kind}: not converted"


def lost_parts(
    modules: list[LoraModule], targets: list[Target], a_shapes: dict[str, tuple], refused: set[str]
) -> list[dict]:
    """Modules whose ΔW reaches B only in part: the rows or columns of A's weight that no
    target carries (a fused tensor traced in part), with the share of ΔW's norm that is lost."""
    by_a = _by_a(targets, related_only=True)
    found = []
    for module in modules:
        if module.target in refused or module.unresolved or module.target not in a_shapes:
            continue
        covered = _covered(view_2d(a_shapes[module.target]), by_a.get(module.target, []))
        if covered is None or covered.all():
            continue
        delta = module.delta()
        total = float(np.linalg.norm(delta))
        share = float(np.linalg.norm(delta[~covered])) / total if total else 0.0
        rows_lost = int((~covered).all(axis=1).sum())
        cols_lost = int((~covered).all(axis=0).sum())
        found.append(
            {
                "module": module.target,
                "rows_lost": rows_lost,
                "cols_lost": cols_lost,
                "lost_share": share,
                "reason": f"{share:.1%} of its ΔW lands nowhere in B ({rows_lost} rows, {cols_lost} columns "
                "of A's weight have no counterpart)",
            }
        )
    return found


def _covered(shape: tuple[int, int], targets: list[Target]) -> np.ndarray | None:
    """Which entries of A's 2-D view some target carries into B (None: no target at all)."""
    if not targets:
        return None
    covered = np.zeros(shape, dtype=bool)
    for target in targets:
        # A selection (pruning) is the transform itself dropping rows or columns: T(ΔW) is
        # carried whole; only slices of A that reach no B tensor are lost.
        rows: slice | np.ndarray = slice(None)
        cols: slice | np.ndarray = slice(None)
        if target.a_slice is not None:
            axis, start, stop = target.a_slice
            if axis == 0:
                rows = slice(start, stop)
            else:
                cols = slice(start, stop)
        covered[rows, cols] = True
    return covered


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_written(module: LoraModule) -> LoraModule:
    """The module as the output file will hold it (rounded to its dtype)."""
    return LoraModule(
        module.target,
        _stored(module.down, module.dtype),
        _stored(module.up, module.dtype),
        module.alpha,
        module.dtype,
        magnitude=_stored_magnitude(module.magnitude),
    )


def _delta_spec(module: LoraModule, fmt: str, shape: tuple) -> TensorSpec:
    """A full delta as one tensor, ``<module>.diff`` (``.diff_b``, ``.set_weight``) in ComfyUI's
    naming (kohya's module names for ``kohya``)."""
    stem = module.target.removesuffix(".bias") if module.kind == "diff_b" else _module_name(module.target)
    prefix = _prefix(stem, fmt)
    values = module.delta().reshape(shape)
    return TensorSpec(f"{prefix}.{module.kind}", module.dtype, tuple(shape), lambda v=values: v)


def _write(
    out: Path,
    modules: list[LoraModule],
    fmt: str,
    conversion: Conversion,
    metadata: dict,
    shapes: dict[str, tuple] | None = None,
    lycoris: list[LycorisModule] | None = None,
) -> None:
    specs, config = lora_tensors(modules, fmt, shapes)
    specs += [spec for module in lycoris or [] for spec in _lycoris_specs(module, fmt)]
    sidecar = out.with_name(out.name + ".conversion.json")
    write_safetensors(out, specs, metadata)
    with atomic_path(sidecar) as temporary:
        temporary.write_text(json.dumps(conversion.as_json(), indent=1) + "\n")
    if config is not None:
        with atomic_path(out.with_name("adapter_config.json")) as temporary:
            temporary.write_text(json.dumps(config, indent=1) + "\n")
