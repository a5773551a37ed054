"""What a user's path names: a checkpoint, a Hugging Face cache entry, a diffusers pipeline root,
one shard of a sharded model, or a file of another format to convert first.

``locate`` runs before ``open_checkpoint``; it never touches the network.

- **Hugging Face cache** (layout: ``huggingface_hub``'s ``file_download.py``): a repo folder
  ``models--org--name`` resolves to its snapshot for ``--revision`` (default ``main``, else the
  newest snapshot); a repo id ``org/name`` that is not a path is looked up in the local cache
  through ``huggingface_hub`` (the ``hub`` extra) with ``local_files_only=True``. A file or folder
  inside ``snapshots/<commit>/`` is named ``org/name``, not after the commit hash or the
  ``blobs/`` file its symbolic link leads to.
- **diffusers pipeline roots** (a ``model_index.json`` beside component folders), given as a path,
  a cache repo or a repo id, are refused with the component list: a pipeline is several models;
  ``component`` (``--component transformer``) takes one, named ``<pipeline>/<component>``.
- **A lone shard** (``model-00001-of-00003.safetensors`` with its ``*.safetensors.index.json``
  beside it) is indexed as asked, with a note that it is one of N and how to take the whole model.

``prepare`` then turns a file of another format into a safetensors file in the cache: GGUF
(``gguf.py``) and ONNX (``onnx.py``) always, a pickle (``pickle.py``) only when allowed, and a
safetensors checkpoint whose weights carry companion scales (fp8-scaled, block fp8:
``scaled.py``) dequantised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from weightidx.errors import InputError

_REPO_FOLDER = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD = re.compile(r"-(?P<index>\d+)-of-(?P<count>\d+)\.safetensors$")
_INDEX_JSON_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class Located:
    """The checkpoint path to open, the model name the location implies (None: from the file),
    and notes for the user (one line each)."""

    path: Path
    name: str | None = None
    notes: tuple[str, ...] = ()


def locate(path: Path | str, revision: str | None = None, component: str | None = None) -> Located:
    """Resolve a user's path (module doc); ``component`` takes one model of a diffusers pipeline.

    Raises:
        InputError: a repo id or revision not in the local cache, ``huggingface_hub`` missing for a
            repo id, a diffusers pipeline root without ``component``, or a ``component`` that is
            not one of the pipeline's.
    """
    given = Path(path)
    if not given.exists() and not given.is_symlink() and _REPO_ID.match(str(path)):
        found = _from_repo_id(str(path), revision)
    elif given.is_dir() and _REPO_FOLDER.match(given.name) and (given / "snapshots").is_dir():
        found = _from_repo_folder(given, revision)
    elif revision is not None:
        raise InputError(
            f"{given}: --revision applies to a Hugging Face cache repo; pass its models--org--name folder"
        )
    else:
        root = given.parent if given.name == "model_index.json" else given  # a pipeline's file
        found = Located(root, _repo_name(given))
    if component is not None:
        return _component(found, component)
    if found.path.is_dir():
        _refuse_pipeline_root(found.path)
    return Located(found.path, found.name, _lone_shard_notes(found.path) + _variant_notes(found.path))


def _variant_notes(folder: Path) -> tuple[str, ...]:
    """A note when a folder's other-precision copies (``*.fp16.safetensors``) are left out."""
    from weightidx.io.safetensors import variant_files

    variants = variant_files(folder) if folder.is_dir() else []
    if not variants:
        return ()
    names = ", ".join(path.name for path in variants)
    return (f"{folder}: left out {names} (the same weights in another precision); pass it to index it",)


def _component(pipeline: Located, component: str) -> Located:
    """One model folder of a diffusers pipeline, named ``<pipeline>/<component>``."""
    root = pipeline.path
    components = _components(root) if root.is_dir() else []
    if component not in components:
        have = f"its components: {', '.join(components)}" if components else "it is not a diffusers pipeline"
        raise InputError(f"{root}: no component '{component}' ({have}); check --component")
    folder = root / component
    return Located(folder, f"{pipeline.name or root.name}/{component}", _variant_notes(folder))


def _repo_name(path: Path) -> str | None:
    """``org/name`` for a path inside ``models--org--name/snapshots/<commit>/`` (unresolved: a
    snapshot file is a symbolic link into ``blobs/``)."""
    parts = path.absolute().parts
    for i in range(len(parts) - 2):
        match = _REPO_FOLDER.match(parts[i])
        if match and parts[i + 1] == "snapshots":
            return f"{match['org']}/{match['name']}"
    return None


def _from_repo_folder(folder: Path, revision: str | None) -> Located:
    match = _REPO_FOLDER.match(folder.name)
    assert match is not None
    repo_id = f"{match['org']}/{match['name']}"
    snapshots = folder / "snapshots"
    wanted = revision or "main"
    ref = folder / "refs" / wanted
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else wanted
    present = [s for s in snapshots.iterdir() if s.is_dir()]
    candidates = [s for s in present if s.name.startswith(commit)]
    if not candidates and revision is None:  # no refs/main: the newest snapshot
        candidates = sorted(present, key=lambda s: s.stat().st_mtime)[-1:]
    if len(candidates) != 1:
        have = ", ".join(sorted(s.name[:12] for s in present)) or "none"
        raise InputError(
            f"{folder}: no single snapshot for revision '{wanted}' (snapshots: {have}); "
            "pass --revision with a commit hash or a ref under refs/"
        )
    return Located(candidates[0], repo_id)


def _from_repo_id(repo_id: str, revision: str | None) -> Located:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise InputError(
            f"{repo_id}: no such file or folder; to read it from the Hugging Face cache, "
            "pip install 'weightidx[hub]'"
        ) from None
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise InputError(
            f"{repo_id}: not in the Hugging Face cache ({HF_HUB_CACHE}) at revision {revision or 'main'}; "
            "weightidx never downloads: fetch it with `hf download` first, or pass a path"
        ) from None
    return Located(Path(folder), repo_id)


def _components(folder: Path) -> list[str]:
    """The model folders of a diffusers pipeline root (a ``model_index.json`` beside them)."""
    if not (folder / "model_index.json").is_file() or any(folder.glob("*.safetensors")):
        return []
    return sorted(
        child.name
        for child in folder.iterdir()
        if child.is_dir() and (any(child.glob("*.safetensors")) or any(child.glob("*" + _INDEX_JSON_SUFFIX)))
    )


def _refuse_pipeline_root(folder: Path) -> None:
    """A diffusers pipeline root holds several models, each in a folder of its own."""
    components = _components(folder)
    if not components:
        return
    raise InputError(
        f"{folder}: a diffusers pipeline of {len(components)} model{'s' if len(components) != 1 else ''} "
        f"({', '.join(components)}); index one with --component {components[0]} "
        f"(or pass its folder: {folder / components[0]})"
    )


def _lone_shard_notes(path: Path) -> tuple[str, ...]:
    """A note when ``path`` is one shard of a model whose shard index sits beside it."""
    match = _SHARD.search(path.name)
    if not path.is_file() or not match:
        return ()
    for index in sorted(path.parent.glob("*" + _INDEX_JSON_SUFFIX)):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
        if path.name in shards:
            return (
                f"{path}: shard {int(match['index'])} of {len(shards)} of the model {index.name} lists; "
                f"this indexes that shard alone (for the whole model: weightidx index {path.parent})",
            )
    return ()


def prepare(
    path: Path | str,
    *,
    allow_pickle: bool = False,
    revision: str | None = None,
    component: str | None = None,
    cache: Path | None = None,
) -> Located:
    """``locate``, then a GGUF or ONNX file (or, with ``allow_pickle``, a pickle) converted to a
    safetensors file in the cache (``cache``, default ``config.cache_folder()``), named after the
    original file.

    Raises:
        InputError: as ``locate``; a missing optional package for the format.
        CheckpointError: the file cannot be converted.
    """
    from weightidx.io.gguf import convert_gguf, is_gguf
    from weightidx.io.onnx import convert_onnx, is_onnx
    from weightidx.io.safetensors import is_pickle

    located = locate(path, revision, component)
    if located.path.suffix.lower() == ".gguf" and located.path.is_file() and not is_gguf(located.path):
        raise InputError(
            f"{located.path}: not a GGUF file (it does not start with GGUF's magic bytes); check the file"
        )
    if is_gguf(located.path):
        converted = convert_gguf(located.path, cache)
        return Located(converted, located.name or located.path.stem, located.notes)
    if is_onnx(located.path):
        converted = convert_onnx(located.path, cache)
        return Located(converted, located.name or located.path.stem, located.notes)
    if allow_pickle and is_pickle(located.path):
        from weightidx.io.pickle import convert_pickle

        converted = convert_pickle(located.path, cache)
        return Located(converted, located.name or located.path.stem, located.notes)
    return _dequantised(located, cache)


def _dequantised(located: Located, cache: Path | None) -> Located:
    """A safetensors checkpoint whose weights carry companion scales, dequantised (``scaled.py``)."""
    from weightidx.io.safetensors import is_pickle, open_checkpoint
    from weightidx.io.scaled import convert_scaled

    if is_pickle(located.path):
        return located  # refused by open_checkpoint, with the reason
    checkpoint = open_checkpoint(located.path)
    converted = convert_scaled(checkpoint, cache)
    if converted is None:
        return located
    return Located(converted, located.name or checkpoint.default_name(), located.notes)
