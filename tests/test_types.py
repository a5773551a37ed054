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


def _schema_node(path: tuple[str, ...]) -> dict:
    from weightidx.compare.report import report_schema

    node = report_schema()
    if path[:1] == ("$defs",):
        node, path = node["$defs"][path[1]], path[2:]
    for name in path:
        node = node["properties"][name]
    return node


def test_the_typed_report_is_the_json_schema() -> None:
    """Every TypedDict of ``compare/document.py`` has the keys of its JSON Schema node, required
    where the schema requires them: the builder, the types and the shipped schema agree."""
    from weightidx.compare.document import SCHEMA_NODES

    for kind, path in SCHEMA_NODES.items():
        node = _schema_node(path)
        keys = set(node.get("properties", {})) or set(node["required"])
        assert set(kind.__annotations__) == keys, kind.__name__
        assert set(kind.__required_keys__) == set(node.get("required", [])), kind.__name__


def test_an_index_row_has_the_index_columns() -> None:
    from weightidx.index.schema import IndexRow, index_schema

    assert list(IndexRow.__annotations__) == index_schema().names
