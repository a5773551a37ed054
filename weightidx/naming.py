"""Rules about tensor names, read from ``weightidx/data/naming.json`` (names never decide
whether two tensors are related; they say where to look again and how to describe a tensor).

- a *block* is a numbered repeat of the model (``blocks.3.``, ``layers.3.``, ``h.3.``);
- a *role* is a key with its block number replaced by ``#``: what the tensor is in any block;
- attention words mark attention projections (lineage splits them into heads);
- an *expert* is a numbered member of a mixture-of-experts layer (``mlp.experts.7.``); its
  *expert role* is the key with the expert number replaced by ``*``;
- tensor types are the HTML report's coarse families (norms, attention, MLP, embeddings);
- LoRA wrappers are the prefixes LoRA files put before a model's own keys.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources


@cache
def _rules() -> dict:
    return json.loads(resources.files("weightidx.data").joinpath("naming.json").read_text(encoding="utf-8"))


@cache
def _block_pattern() -> re.Pattern[str]:
    words = "|".join(re.escape(word) for word in _rules()["block_words"])
    return re.compile(rf"(?:^|\.)(?:{words})\.(\d+)\.")


def block_of(key: str) -> int | None:
    """The number of the repeated block a key belongs to (``blocks.3.attn.q.weight`` -> 3)."""
    found = _block_pattern().search(key)
    return int(found.group(1)) if found else None


def role_of(key: str) -> str:
    """The key with its block number replaced by ``#``: what the tensor is in any block."""
    found = _block_pattern().search(key)
    return key if found is None else key[: found.start(1)] + "#" + key[found.end(1) :]


def in_block(role: str, block: int | None) -> str:
    """The key of ``role`` in ``block`` (the inverse of ``role_of``)."""
    return role if block is None else role.replace("#", str(block), 1)


@cache
def _expert_pattern() -> re.Pattern[str]:
    words = "|".join(re.escape(word) for word in _rules()["expert_words"])
    return re.compile(rf"(?:^|\.)(?:{words})\.(\d+)\.")


def expert_role(key: str) -> str | None:
    """The key with its expert number replaced by ``*`` (``layers.3.mlp.experts.7.w1.weight`` ->
    ``layers.3.mlp.experts.*.w1.weight``); None for a tensor of no expert."""
    found = _expert_pattern().search(key)
    return None if found is None else key[: found.start(1)] + "*" + key[found.end(1) :]


def is_attention(key: str) -> bool:
    """Whether the key names an attention projection (``attn``, ``attention``)."""
    lowered = key.lower()
    return any(word in lowered for word in _rules()["attention_words"])


def tensor_type(key: str) -> str:
    """A coarse family for a tensor name (the HTML report's per-type table); ``other`` when none fits."""
    lowered = key.lower()
    for name, pattern in _rules()["tensor_types"]:
        if re.search(pattern, lowered):
            return name
    return "other"


def tensor_types() -> list[str]:
    """The families ``tensor_type`` names, in order, then ``other``."""
    return [name for name, _ in _rules()["tensor_types"]] + ["other"]


def lora_wrappers() -> tuple[str, ...]:
    """Prefixes LoRA files put before a model's keys, longest first."""
    return tuple(_rules()["lora_wrappers"])


def natural_key(key: str) -> tuple:
    """Sort key that orders numbers by value: ``blocks.2`` before ``blocks.10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", key))
