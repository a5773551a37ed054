"""The compare report as a typed document: what ``report.build_report`` returns, what
``write_report`` writes as JSON (schema_version 1) and what ``read_report``, the renderers and
``lora convert`` read.

The report *is* a JSON document, so it is typed as one (``TypedDict``: plain dicts at run time,
checked key by key by a type checker), not held twice as objects and their serialisation. Each
type mirrors a definition of the shipped JSON Schema, ``weightidx/data/report.schema.json``;
``tests/test_types.py`` checks that every type's keys, and which of them are required, are the
schema's. (No ``from __future__ import annotations`` here: ``NotRequired`` must be seen when
the classes are made, for ``__required_keys__``.)
"""

from typing import Any, Literal, NotRequired, TypedDict

Scenario = Literal[
    "identical", "copied", "transformed", "fine_tuned", "partially_related", "pruned", "unrelated",
    "incompatible",
]  # fmt: skip


class Tool(TypedDict):
    name: Literal["weightidx"]
    version: str


class ModelEntry(TypedDict):
    """One side's model: its name, its index file, its checkpoint and its size."""

    name: str
    index: str
    source: str
    tensors: int
    parameters: int
    bytes: int


class Models(TypedDict):
    a: ModelEntry
    b: ModelEntry


class SliceEntry(TypedDict):
    axis: Literal[0, 1]
    start: int
    stop: int


class RegionEntry(TypedDict):
    """A tensor (``slice`` None) or a slice of its 2-D view."""

    key: str
    slice: SliceEntry | None


class EvidenceEntry(TypedDict):
    """A test of one pair: the statistic, its correlation, how many values, the null's spread,
    the z-score and the p-value."""

    statistic: str
    correlation: float
    values: int
    null_spread: float | None
    z: float
    p_value: float


class PermutationEntry(TypedDict):
    axis: Literal[0, 1]
    order: list[int]
    one_to_one: float
    moved: float
    pattern: str | None


class SelectEntry(TypedDict):
    """Rows and columns of A kept in B, as ``[start, stop, step]`` ranges (None: all)."""

    rows: list[list[int]] | None
    cols: list[list[int]] | None


class MatchEntry(TypedDict):
    """One B region traced to one A region: the transform, the metrics, the test, the verdict."""

    b: RegionEntry
    a: RegionEntry
    transform: list[str]  # ``types.Transform`` written as text
    cosine: float | None
    correlation: float | None
    relative_l2: float | None
    scale: float | None
    z_score: float | None
    max_abs_diff: float | None
    equal_after_cast: float | None
    identical: bool
    evidence: Literal["exact", "estimated"]
    significance: EvidenceEntry
    screening: EvidenceEntry
    verdict: Literal["match", "partial", "different"]
    weak_evidence: bool
    estimated_correlation: float | None
    permutation: NotRequired[PermutationEntry]
    select: NotRequired[SelectEntry]


class Matrices(TypedDict):
    b: int
    related: int
    match: int
    partial: int


class OtherTensors(TypedDict):
    b: int
    related: int


class ChangedValues(TypedDict):
    matrices: int
    largest_relative_l2: float | None


class Quantised(TypedDict):
    matrices: int
    types: list[str]
    largest_relative_l2: float | None
    expected_relative_l2: float | None
    beyond_expected: int
    largest_residual_beyond: float | None


class Significance(TypedDict):
    method: Literal["Benjamini-Hochberg"]
    false_discovery_rate: float
    null_inflation: float
    tests: int
    p_threshold: float
    z_threshold: float | None
    strongest_matrix_z: float | None
    detectable_correlation: list[float | None] | None


class HiddenPruning(TypedDict):
    kept: int
    of: int
    in_order: bool


class BlockPruning(TypedDict):
    kept: int
    of: int
    head_size: int | None
    blocks: int
    in_order: bool


class Pruned(TypedDict):
    hidden: HiddenPruning | None
    per_block: list[BlockPruning]


class UpcycledExample(TypedDict):
    a: str
    b: str


class Upcycled(TypedDict):
    sources: int
    experts: int
    per_source: list[int]
    example: UpcycledExample


class Summary(TypedDict):
    """The facts the verdict is generated from, and the verdict."""

    scenario: Scenario
    verdict: str
    mean_cosine_similarity: NotRequired[float | None]
    high_similarity_count: NotRequired[int]
    medium_similarity_count: NotRequired[int]
    low_similarity_count: NotRequired[int]
    matched_b_tensors: int
    unmatched_a: int
    unmatched_b: int
    matrices: Matrices
    other_tensors: OtherTensors
    correlation_range: NotRequired[list[float] | None]
    changed_values: NotRequired[ChangedValues]
    quantised: NotRequired[Quantised]
    weakest_z: NotRequired[float | None]
    transforms: list[str]
    identical: bool
    comparable: bool
    widths: NotRequired[list[int | None]]
    blocks: NotRequired[list[int | None]]
    significance: Significance
    layouts: list[str]
    pruned: Pruned | None
    upcycled: NotRequired[Upcycled | None]


class Unmatched(TypedDict):
    a: list[str]
    b: list[str]


class UnmatchedReasons(TypedDict):
    """Each unmatched tensor and why (``report.UNMATCHED_REASONS``)."""

    a: dict[str, str]
    b: dict[str, str]


class BlockEntry(TypedDict):
    a_block: int
    b_block: int
    tensors: int
    mean_correlation: float | None


class ShapeEntry(TypedDict):
    shape: list[int]
    a_count: int
    b_count: int


class LayoutEntry(TypedDict):
    b: str
    text: str


class Lineage(TypedDict):
    """Lineage across a width change (``lineage.py``): per shared axis, the Gram comparison."""

    method: Literal["checkpoint values", "index sketches"]
    axes: list[dict[str, Any]]
    verdict: str


class Report(TypedDict):
    """The whole report (schema_version 1)."""

    schema_version: Literal[1]
    tool: Tool
    models: Models
    summary: Summary
    warnings: list[str]
    matches: list[MatchEntry]
    unmatched: Unmatched
    unmatched_reasons: UnmatchedReasons
    blocks: list[BlockEntry]
    shapes: list[ShapeEntry]
    layouts: NotRequired[list[LayoutEntry]]
    lineage: NotRequired[Lineage]


#: Each type and the JSON Schema node it mirrors (``tests/test_types.py``): a path of property
#: names from the schema's root (``$defs`` entries by name).
SCHEMA_NODES: dict[type, tuple[str, ...]] = {
    Report: (),
    Tool: ("tool",),
    Models: ("models",),
    ModelEntry: ("$defs", "model"),
    RegionEntry: ("$defs", "region"),
    EvidenceEntry: ("$defs", "evidence"),
    MatchEntry: ("$defs", "match"),
    PermutationEntry: ("$defs", "match", "permutation"),
    SelectEntry: ("$defs", "match", "select"),
    Summary: ("$defs", "summary"),
    Matrices: ("$defs", "summary", "matrices"),
    OtherTensors: ("$defs", "summary", "other_tensors"),
    ChangedValues: ("$defs", "summary", "changed_values"),
    Quantised: ("$defs", "summary", "quantised"),
    Significance: ("$defs", "summary", "significance"),
    Unmatched: ("unmatched",),
    UnmatchedReasons: ("unmatched_reasons",),
    Lineage: ("$defs", "lineage"),
}
