"""The compare stage's small types: transforms as the report writes them."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "text", ["rename", "transpose", "cast:f32->bf16", "concat:0", "permute:rows", "select:cols", "scale:2054"]
)
def test_transform_text_round_trips(text: str) -> None:
    from weightidx.compare.types import Transform

    assert str(Transform.parse(text)) == text


def test_transform_rejects_unknown_kinds_and_knows_its_factor() -> None:
    from weightidx.compare.types import Transform

    with pytest.raises(ValueError, match="unknown transform 'rotate'"):
        Transform.parse("rotate:90")
    assert Transform.parse("scale:0.5").factor == 0.5 and Transform("rename").factor == 1.0
