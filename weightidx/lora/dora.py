"""DoRA magnitudes: what they do to a weight, and how they follow a transform exactly.

DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353) adds a
magnitude vector ``m`` to a module (LoRA, LoKr or LoHa) and replaces the weight by

    W' = m ⊙ (W + ΔW) / ‖W + ΔW‖

with the norms taken along one axis of the 2-D view: per output row (axis 0; PEFT's
``lora_magnitude_vector`` of shape (out,), LyCORIS's ``dora_scale`` of shape (out, 1, ...)) or per
input column (axis 1; LyCORIS's ``dora_scale`` of shape (1, in, ...) with ``wd_on_out=False``).
ComfyUI's ``weight_decompose`` (``comfy/weight_adapter/base.py``) tells the two apart as done
here: ``dora_scale.shape[0] == W.shape[0]`` means per row.

For B = T(A) the converted module must give ``W'_B = T(W'_A)``. With ``ΔW_B = T(ΔW_A)``:

* a constant scale ``c``: ``m_B = |c| · m`` (the direction keeps the sign of ``c``);
* a transpose: the same values, the axis flips;
* a reordering, selection or slice *along m's axis*: ``m`` reordered, selected or sliced alike;
  a reordering along the other axis leaves every norm as it was; a selection or slice along the
  other axis changes every norm, so ``m`` cannot follow (the module's exact full change
  ``W'_A − W_A`` can, as a full delta);
* B's weight a concatenation along m's axis (q, k, v -> qkv by rows): the parts' magnitudes side
  by side, and the rows no DoRA module covers get the norms of B's merged weight
  ``W_B + ΔW_B``, which leaves them as they are. Concatenated along the other axis the norms
  would mix the parts: not exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

#: ``<module>.dora_scale`` (LyCORIS, ComfyUI, kohya-style files) and PEFT/diffusers'
#: ``<module>.lora_magnitude_vector`` (``.default`` and ``.weight`` as PEFT may add them).
MAGNITUDE = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>dora_scale|lora_magnitude_vector)(?:\.default)?(?:\.weight)?$"
)


@dataclass(frozen=True)
class Magnitude:
    """A DoRA magnitude: one value per row (``axis`` 0) or per column (1) of the 2-D view."""

    values: np.ndarray  # (rows,) or (cols,), float64
    axis: int
    dtype: str  # the safetensors dtype it is stored in
    stored: tuple[int, ...] = ()  # the shape it was read with (messages)

    def scaled(self, factor: float) -> Magnitude:
        return replace(self, values=self.values * abs(factor))

    def transposed(self) -> Magnitude:
        return replace(self, axis=1 - self.axis)

    def taken(self, axis: int, index: np.ndarray | slice) -> Magnitude:
        """Rows (axis 0) or columns (1) of the weight taken by ``index``: m follows along its
        own axis and is unchanged by a reordering along the other (callers refuse selections
        along the other axis: ``follows``)."""
        return replace(self, values=self.values[index]) if axis == self.axis else self


def read_magnitude(values: np.ndarray, dtype: str, rows: int, key: str = "") -> Magnitude:
    """The magnitude as stored under ``key`` for a weight of ``rows`` output rows. PEFT's
    ``lora_magnitude_vector`` is always per output row, (out,) for a linear layer and
    (1, out, 1, 1) for a convolution (PEFT ``tuners/lora/dora.py``); a ``dora_scale`` is per row
    when it is 1-D or its first dimension is the weight's (ComfyUI's rule, module doc), else per
    column."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    peft = "lora_magnitude_vector" in key
    axis = 0 if peft or values.ndim <= 1 or values.shape[0] == rows else 1
    return Magnitude(flat, axis, dtype, tuple(values.shape))


def shape_problem(magnitude: Magnitude, weight_shape: tuple[int, ...], view: tuple[int, int]) -> str | None:
    """Why the magnitude does not fit the weight (None when it does)."""
    if magnitude.axis == 1 and len(weight_shape) > 2:
        return "a DoRA magnitude per input channel of a convolution is not converted"
    if magnitude.values.size != view[magnitude.axis]:
        shape = list(magnitude.stored or (magnitude.values.size,))
        return (
            f"its DoRA magnitude of shape {shape} fits neither the weight's {view[0]} rows nor its "
            f"{view[1]} columns"
        )
    return None


def merged(weight: np.ndarray, delta: np.ndarray, magnitude: Magnitude) -> np.ndarray:
    """``W' = m ⊙ (W + ΔW) / ‖W + ΔW‖`` in the 2-D view (float64); a zero norm leaves its row
    (column) as ``W + ΔW``, as no scale can change it."""
    combined = weight.astype(np.float64) + delta
    norms = np.linalg.norm(combined, axis=1 - magnitude.axis)
    factor = np.divide(magnitude.values, norms, out=np.ones_like(norms), where=norms > 0)
    return combined * (factor[:, None] if magnitude.axis == 0 else factor[None, :])


def change(weight: np.ndarray, delta: np.ndarray, magnitude: Magnitude | None) -> np.ndarray:
    """What the module does to the weight, ``W' − W`` (``ΔW`` without a magnitude)."""
    return delta if magnitude is None else merged(weight, delta, magnitude) - weight


def filled(values: np.ndarray, axis: int, weight: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``values`` (NaN where no DoRA module covers the row or column) completed with the norms of
    ``W + ΔW``, which leave those rows or columns unchanged."""
    norms = np.linalg.norm(weight.astype(np.float64) + delta, axis=1 - axis)
    return np.where(np.isnan(values), norms, values)


def stored_shape(magnitude: Magnitude, weight_ndim: int, fmt: str) -> tuple[int, ...]:
    """The tensor shape a format's loader expects: PEFT and diffusers (out,); LyCORIS/ComfyUI
    (out, 1, ...) per row or (1, in, ...) per column, as many dimensions as the weight."""
    n = magnitude.values.size
    if fmt in ("peft", "diffusers"):  # PEFT's layout: (out,), a convolution's (1, out, 1, 1)
        return (n,) if weight_ndim <= 2 else (1, n, *(1,) * (weight_ndim - 2))
    ones = (1,) * max(weight_ndim - 2, 0)
    return (n, 1, *ones) if magnitude.axis == 0 else (1, n, *ones)


def key_suffix(fmt: str) -> str:
    return "lora_magnitude_vector" if fmt in ("peft", "diffusers") else "dora_scale"
