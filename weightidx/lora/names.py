"""Which weight of model A a LoRA module name means: one algorithm, not a list of spellings.

Trainers write the same module in many ways: ``lora_unet_blocks_0_self_attn_q`` (kohya),
``lora_unet_blocks_0.self_attn.q`` (underscores up to the block index, dots after),
``diffusion_model.blocks.0.self_attn.q``, ``base_model.model.blocks.0.self_attn.q``, and models
carry wrappers of their own (``model.diffusion_model.``). Both sides are normalised the same
way and compared:

A key written exactly as the module name (with or without a known wrapper, with or without
``.weight``) is taken first. Otherwise:

1. known wrappers are stripped from the front, repeatedly (``naming.lora_wrappers`` and the
   kohya and LyCORIS prefixes ``lora_unet_``, ``lora_transformer_``, ``lycoris_``);
2. ``.`` and ``_`` count as one separator: every run of them becomes ``_``;
3. a trailing ``weight`` and trailing separators are dropped.

A module name resolves when exactly one of A's weight keys normalises to the same text; none
or several is a refusal that names the module and the nearest of A's keys. Text-encoder modules
(``lora_te*``, ``text_encoder.``) are refused as such: they adapt another model.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass

from weightidx.naming import lora_wrappers

_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_", "unet.")
_TEXT_ENCODER = re.compile(r"^(lora_te\d*_|text_encoder(_\d+)?[._]|te\d*[._])")
_SEPARATORS = re.compile(r"[._]+")


def normalised(name: str) -> str:
    """The comparable form of a module name or weight key (module doc)."""
    stripped = True
    while stripped:
        stripped = False
        for wrapper in (*lora_wrappers(), *_KOHYA_PREFIXES):
            if name.startswith(wrapper) and len(name) > len(wrapper):
                name, stripped = name[len(wrapper) :], True
    text = _SEPARATORS.sub("_", name).strip("_")
    return text.removesuffix("_weight").strip("_")


@dataclass(frozen=True)
class Resolved:
    """A module name's weight key in A, or why there is none (``key`` None)."""

    key: str | None
    reason: str | None = None


class Resolver:
    """Module names -> A's weight keys (module doc)."""

    def __init__(self, a_keys: set[str], label: str = "A") -> None:
        self._label = label  # how refusals name the model: "A" in a conversion
        self._keys = a_keys
        self._by_name: dict[str, list[str]] = defaultdict(list)
        for key in sorted(a_keys):
            self._by_name[normalised(key)].append(key)
        self._names = sorted(self._by_name)

    def resolve(self, module: str) -> Resolved:
        if _TEXT_ENCODER.match(module):
            return Resolved(
                None, "a text-encoder module: compare the text encoders and convert with that report"
            )
        for candidate in _exact_candidates(module):  # a key written as it is wins over a normalised one
            if candidate in self._keys:
                return Resolved(candidate)
        found = self._by_name.get(normalised(module), [])
        if len(found) == 1:
            return Resolved(found[0])
        if found:
            return Resolved(
                None, f"its name fits several of {self._label}'s weights ({', '.join(found[:3])})"
            )
        nearest = difflib.get_close_matches(normalised(module), self._names, n=2, cutoff=0.6)
        hint = f"; nearest: {', '.join(self._by_name[n][0] for n in nearest)}" if nearest else ""
        return Resolved(None, f"no weight of {self._label} has this name{hint}")


def _exact_candidates(module: str) -> list[str]:
    """The module name, and with each known wrapper stripped, as a weight key and as it is."""
    wrappers = (*lora_wrappers(), *_KOHYA_PREFIXES)
    names = [module] + [module[len(w) :] for w in wrappers if module.startswith(w)]
    return [candidate for name in names for candidate in (f"{name}.weight", name)]
