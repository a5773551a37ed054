"""LyCORIS LoKr and LoHa modules: their ΔW, and their factors moved exactly through the
transforms that keep their structure.

Definitions (LyCORIS ``lycoris/modules/lokr.py`` and ``loha.py``; ComfyUI
``comfy/weight_adapter/lokr.py`` and ``loha.py``), for a 2-D weight:

- LoKr: ``ΔW = s · kron(w1, w2)``, each of ``w1``, ``w2`` stored whole (``lokr_w1``) or as a
  product (``lokr_w1_a @ lokr_w1_b``); ``s = alpha / r`` with ``r`` the inner size of the last
  factorised one (``w2_b``'s rows, else ``w1_b``'s), else 1;
- LoHa: ``ΔW = s · (w1_a @ w1_b) ∘ (w2_a @ w2_b)`` (elementwise), ``s = alpha / w1_b``'s rows.

A rename or a cast moves the factors as they are; a constant scale ``c`` multiplies one factor
(and a DoRA magnitude by ``|c|``, ``dora.py``);
a transpose is exact too, ``kron(w1, w2)ᵀ = kron(w1ᵀ, w2ᵀ)`` and ``(A ∘ B)ᵀ = Aᵀ ∘ Bᵀ``, each
product ``(a @ b)ᵀ = bᵀ @ aᵀ``. Any other transform (a slice of a fused tensor, a reordering, a
selection) breaks the structure: such a module is written as a full delta with
``--allow-full-delta``, else refused. The Tucker forms (``lokr_t2``, ``hada_t1``/``t2``, for
convolutions) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from weightidx.lora.dora import Magnitude

PART = re.compile(r"^(?P<module>.+)\.(?P<part>lokr_w[12](?:_[ab])?|lokr_t2|hada_w[12]_[ab]|hada_t[12])$")


@dataclass
class LycorisModule:
    """One LoKr or LoHa module: its parts by name (``lokr_w1``, ``hada_w2_b``, ...)."""

    kind: str  # "lokr" or "loha"
    name: str  # the module's name as written
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    alpha: float | None = None
    dtype: str = "F32"
    target: str | None = None  # A's weight key, once resolved
    unresolved: str | None = None
    magnitude: Magnitude | None = None  # DoRA (``dora.py``)
    magnitude_key: str | None = None  # the file's tensor holding it

    @property
    def label(self) -> str:
        return "LoKr (LyCORIS)" if self.kind == "lokr" else "LoHa (LyCORIS)"

    def problem(self) -> str | None:
        """Why the module cannot be read as a 2-D LoKr/LoHa (None when it can)."""
        if any(p in self.parts for p in ("lokr_t2", "hada_t1", "hada_t2")):
            return f"{self.label} in Tucker form (t1/t2, for convolutions) is not converted"
        if self.kind == "lokr":
            for side in ("w1", "w2"):
                if f"lokr_{side}" not in self.parts and not {f"lokr_{side}_a", f"lokr_{side}_b"} <= set(
                    self.parts
                ):
                    return f"{self.label} module without its {side} (lokr_{side}, or lokr_{side}_a and _b)"
        elif not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= set(self.parts):
            return f"{self.label} module without all four of hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b"
        if any(np.ndim(v) != 2 for v in self.parts.values()):
            return f"{self.label} of a convolution (factors of more than 2 dimensions) is not converted"
        return None

    def scale(self) -> float:
        if self.alpha is None:
            return 1.0
        if self.kind == "loha":
            return self.alpha / self.parts["hada_w1_b"].shape[0]
        inner = next(
            (self.parts[f"lokr_{s}_b"].shape[0] for s in ("w2", "w1") if f"lokr_{s}_b" in self.parts), None
        )
        return 1.0 if inner is None else self.alpha / inner

    def _side(self, side: str) -> np.ndarray:
        prefix = "lokr" if self.kind == "lokr" else "hada"
        if f"{prefix}_{side}" in self.parts:
            return self.parts[f"{prefix}_{side}"].astype(np.float64)
        return self.parts[f"{prefix}_{side}_a"].astype(np.float64) @ self.parts[f"{prefix}_{side}_b"].astype(
            np.float64
        )

    def delta(self) -> np.ndarray:
        """ΔW (2-D, float64)."""
        if self.kind == "lokr":
            return self.scale() * np.kron(self._side("w1"), self._side("w2"))
        return self.scale() * (self._side("w1") * self._side("w2"))

    def moved(self, target: str, factor: float, transpose: bool) -> LycorisModule:
        """The module on B's weight ``target``: ΔW times ``factor``, transposed if asked, exactly."""
        parts = {name: values.astype(np.float64) for name, values in self.parts.items()}
        if transpose:
            for name in list(parts):
                if name.endswith("_a"):
                    other = name[:-2] + "_b"
                    parts[name], parts[other] = parts[other].T, parts[name].T
                elif not name.endswith("_b"):
                    parts[name] = parts[name].T
        first = next(n for n in ("lokr_w1", "lokr_w1_a", "hada_w1_a") if n in parts)
        parts[first] = parts[first] * factor
        magnitude = self.magnitude
        if magnitude is not None:
            magnitude = magnitude.scaled(factor)
            magnitude = magnitude.transposed() if transpose else magnitude
        return LycorisModule(self.kind, self.name, parts, self.alpha, self.dtype, target, magnitude=magnitude)
