"""LyCORIS LoKr and LoHa modules: their ΔW, and their factors moved exactly through the
transforms that keep their structure.

Definitions (LyCORIS ``lycoris/modules/lokr.py`` and ``loha.py``; ComfyUI
``comfy/weight_adapter/lokr.py`` and ``loha.py``), in the weight's 2-D view (out, in · kernel):

- LoKr: ``ΔW = s · kron(w1, w2)``, each of ``w1``, ``w2`` stored whole (``lokr_w1``; a
  convolution's ``w2`` 4-D) or as a product (``lokr_w1_a @ lokr_w1_b``), ``w2`` also in Tucker
  form ``einsum("i j k l, j r, i p -> p r k l", lokr_t2, lokr_w2_b, lokr_w2_a)``; ``s = alpha /
  r`` with ``r`` the inner size of the last factorised one (``w2_b``'s rows, else ``w1_b``'s),
  else 1. A 4-D ``w2`` enters the product as its 2-D view (``kron(w1[..., None, None], w2)``
  has the same 2-D view);
- LoHa: ``ΔW = s · (w1_a @ w1_b) ∘ (w2_a @ w2_b)`` (elementwise), each product in Tucker form
  with ``hada_t1`` / ``hada_t2`` as above; ``s = alpha / w1_b``'s rows.

A rename or a cast moves the factors as they are; a constant scale ``c`` multiplies one factor
(and a DoRA magnitude by ``|c|``, ``dora.py``);
a transpose is exact too, ``kron(w1, w2)ᵀ = kron(w1ᵀ, w2ᵀ)`` and ``(A ∘ B)ᵀ = Aᵀ ∘ Bᵀ``, each
product ``(a @ b)ᵀ = bᵀ @ aᵀ``. Reorderings, selections and slices of A's rows or columns
(a split, a pruned or permuted B) are exact for LoHa, and for LoKr when they take whole blocks
of the Kronecker product (``LycorisModule.taken``). Anything else (a slice of a fused B weight,
any other reordering) breaks the structure: such a module is written as a full delta with
``--allow-full-delta``, else refused. Convolution modules (4-D factors, Tucker forms) move as
they are through renames, casts, reshapes and scales; they are not transposed.
"""

from __future__ import annotations

import math
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
    alpha_problem: str | None = None  # a malformed alpha tensor (``convert._alpha_problem``)

    @property
    def label(self) -> str:
        return "LoKr (LyCORIS)" if self.kind == "lokr" else "LoHa (LyCORIS)"

    @property
    def convolution(self) -> bool:
        """Whether a factor has kernel dimensions (a Tucker core or a 4-D ``w2``)."""
        return any(np.ndim(v) > 2 for v in self.parts.values())

    def problem(self) -> str | None:
        """Why the module cannot be read as a LoKr/LoHa (None when it can)."""
        if self.alpha_problem is not None:
            return self.alpha_problem
        if any(np.size(v) == 0 for v in self.parts.values()):
            return f"{self.label} module with an empty factor (rank 0)"
        if not all(np.isfinite(v).all() for v in self.parts.values()):
            return f"{self.label} module whose factors hold NaN or infinite values"
        if ("hada_t1" in self.parts) != ("hada_t2" in self.parts):
            return f"{self.label} module with only one of its Tucker cores (hada_t1, hada_t2)"
        if self.kind == "lokr":
            for side in ("w1", "w2"):
                if f"lokr_{side}" not in self.parts and not {f"lokr_{side}_a", f"lokr_{side}_b"} <= set(
                    self.parts
                ):
                    return f"{self.label} module without its {side} (lokr_{side}, or lokr_{side}_a and _b)"
        elif not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= set(self.parts):
            return f"{self.label} module without all four of hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b"
        try:
            self.shape  # noqa: B018  (the shapes chain, checked without forming ΔW)
        except ValueError as exc:
            return f"{self.label} factors do not fit each other ({exc})"
        return None

    @property
    def shape(self) -> tuple[int, int]:
        """ΔW's 2-D shape, from the factors' shapes alone (``delta`` forms the matrix).

        Raises:
            ValueError: the factors' shapes do not chain.
        """
        (r1, c1), (r2, c2) = self._side_shape("w1"), self._side_shape("w2")
        if self.kind == "lokr":
            return r1 * r2, c1 * c2
        if (r1, c1) != (r2, c2):
            raise ValueError(f"w1 is {r1}x{c1}, w2 {r2}x{c2}")
        return r1, c1

    def _side_shape(self, side: str) -> tuple[int, int]:
        """The 2-D shape ``_side`` gives, from the shapes (ValueError when they do not chain)."""
        prefix = "lokr" if self.kind == "lokr" else "hada"
        if f"{prefix}_{side}" in self.parts:
            shape = np.shape(self.parts[f"{prefix}_{side}"])
            return shape[0], math.prod(shape[1:])
        a, b = np.shape(self.parts[f"{prefix}_{side}_a"]), np.shape(self.parts[f"{prefix}_{side}_b"])
        core = self.parts.get(f"lokr_t{side[1]}" if prefix == "lokr" else f"hada_t{side[1]}")
        if core is not None:  # einsum "i j k l, j r, i p -> p r k l"
            if len(a) != 2 or len(b) != 2 or np.ndim(core) != 4 or np.shape(core)[:2] != (a[0], b[0]):
                raise ValueError(f"Tucker core {list(np.shape(core))} with factors {list(a)}, {list(b)}")
            return a[1], b[1] * math.prod(np.shape(core)[2:])
        if len(a) != 2 or len(b) < 2 or a[1] != b[0]:
            raise ValueError(f"{side}_a {list(a)} and {side}_b {list(b)} do not multiply")
        return a[0], math.prod(b[1:])

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
        """``w1`` or ``w2`` in its 2-D view (rows, the rest)."""
        prefix = "lokr" if self.kind == "lokr" else "hada"
        if f"{prefix}_{side}" in self.parts:
            whole = self.parts[f"{prefix}_{side}"].astype(np.float64)
            return whole.reshape(whole.shape[0], -1)
        a = self.parts[f"{prefix}_{side}_a"].astype(np.float64)
        b = self.parts[f"{prefix}_{side}_b"].astype(np.float64)
        core = self.parts.get(f"lokr_t{side[1]}" if prefix == "lokr" else f"hada_t{side[1]}")
        if core is not None:  # Tucker: (p, r, k, l) from t (i, j, k, l), b (j, r), a (i, p)
            rebuilt = np.einsum("ijkl,jr,ip->prkl", core.astype(np.float64), b, a)
            return rebuilt.reshape(rebuilt.shape[0], -1)
        return a @ b.reshape(b.shape[0], -1)

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

    def taken(self, axis: int, index: np.ndarray | slice) -> LycorisModule | None:
        """The module whose ΔW is this one's rows (``axis`` 0) or columns (1) at ``index`` (a
        reordering, a selection or a slice), when its factors can say so exactly, else None:

        - LoHa: ``(A ∘ B)[index] = A[index] ∘ B[index]``, and each product's rows are its ``_a``
          factor's rows (columns: its ``_b`` factor's);
        - LoKr: row ``i`` of ``kron(w1, w2)`` is ``w1[i // n2] ⊗ w2[i % n2]``; an index that takes
          whole blocks of ``n2`` in order (``[n2 · p + 0 … n2 · p + n2 − 1]`` for each ``p``) takes
          rows ``p`` of ``w1``, one that takes the same rows ``q`` of ``w2`` within every block in
          block order takes rows ``q`` of ``w2``; any other index is not a Kronecker product.

        A DoRA magnitude follows along its axis; a selection across it changes the norms (None).
        Convolution modules (kernel dimensions) are not taken apart (None).
        """
        if self.convolution:
            return None
        size = self.shape[axis]
        index = np.arange(size)[index]  # a slice as the positions it takes
        magnitude = self.magnitude
        if magnitude is not None:
            if axis == magnitude.axis:
                magnitude = magnitude.taken(axis, index)
            elif sorted(index.tolist()) != list(range(size)):
                return None
        parts = dict(self.parts)
        if self.kind == "loha":
            for side in ("w1", "w2"):
                name = f"hada_{side}_a" if axis == 0 else f"hada_{side}_b"
                parts[name] = parts[name][index] if axis == 0 else parts[name][:, index]
        else:
            found = self._kron_index(axis, index)
            if found is None:
                return None
            side, inner = found
            whole = f"lokr_{side}"
            name = whole if whole in parts else f"lokr_{side}_a" if axis == 0 else f"lokr_{side}_b"
            parts[name] = parts[name][inner] if axis == 0 else parts[name][:, inner]
        return LycorisModule(
            self.kind, self.name, parts, self.alpha, self.dtype, self.target, magnitude=magnitude
        )

    def _kron_index(self, axis: int, index: np.ndarray) -> tuple[str, np.ndarray] | None:
        """Which factor (``w1`` or ``w2``) and which of its rows/columns ``index`` takes of
        ``kron(w1, w2)`` along ``axis`` (``taken``), or None."""
        n1, n2 = self._side_shape("w1")[axis], self._side_shape("w2")[axis]
        if index.size and index.size % n2 == 0:
            blocks = index.reshape(-1, n2)
            if (
                np.array_equal(blocks - blocks[:, :1], np.broadcast_to(np.arange(n2), blocks.shape))
                and not (blocks[:, 0] % n2).any()
            ):
                return "w1", blocks[:, 0] // n2
        if index.size and index.size % n1 == 0:
            within = index.reshape(n1, -1)
            offsets = within - (np.arange(n1) * n2)[:, None]
            if (offsets >= 0).all() and (offsets < n2).all() and (offsets == offsets[0]).all():
                return "w2", offsets[0]
        return None
