"""The pairs a comparison finds: regions of tensors, candidates with their evidence, matches
with their metrics and verdict, and the rule that judges them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from weightidx import policy
from weightidx.compare.metrics import PairMetrics
from weightidx.compare.permutation import Permutation
from weightidx.compare.significance import Evidence, exact_evidence, scaled, strongest


@dataclass(frozen=True)
class Region:
    """A tensor or a slice of its 2-D view (axis 0 = rows, 1 = columns)."""

    key: str
    axis: int | None = None
    start: int = 0
    stop: int = 0

    def overlaps(self, other: Region) -> bool:
        if self.key != other.key:
            return False
        if self.axis is None or other.axis is None or self.axis != other.axis:
            return True
        return self.start < other.stop and other.start < self.stop

    def as_json(self) -> dict:
        slice_ = None if self.axis is None else {"axis": self.axis, "start": self.start, "stop": self.stop}
        return {"key": self.key, "slice": slice_}


@dataclass(frozen=True)
class Transform:
    """One step of how A's region became B's, written in the report as ``kind`` or
    ``kind:parameter``: ``rename``, ``transpose``, ``reshape``, ``cast:f32->bf16``,
    ``concat:0`` / ``split:1`` / ``gather:0`` (the axis), ``permute:rows``, ``select:cols``,
    ``scale:2054`` (B = factor · A), ``quantise:Q4_K`` (B stored in that quantised type:
    ``IndexedModel.quantisation``)."""

    kind: str
    parameter: str | None = None

    KINDS = frozenset(
        {
            "rename",
            "transpose",
            "reshape",
            "cast",
            "concat",
            "split",
            "gather",
            "permute",
            "select",
            "scale",
            "quantise",
        }
    )

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"unknown transform {self.kind!r}")

    @classmethod
    def parse(cls, text: str) -> Transform:
        """The step a report's text names; raises ``ValueError`` for an unknown kind."""
        kind, sep, parameter = text.partition(":")
        return cls(kind, parameter if sep else None)

    def __str__(self) -> str:
        return self.kind if self.parameter is None else f"{self.kind}:{self.parameter}"

    @property
    def factor(self) -> float:
        """The factor of a ``scale`` step (1.0 for any other)."""
        return float(self.parameter) if self.kind == "scale" and self.parameter else 1.0


@dataclass(frozen=True)
class Candidate:
    """A pair of regions under a relation: its estimated correlation (the degree, from the
    sketches or, for vectors, the samples) and the evidence that the two are related."""

    a: Region
    b: Region
    relation: str
    estimate: float
    evidence: Evidence
    identical: bool
    capacity: int = 0  # values in the largest statistic the pair had (sketch part or samples)


@dataclass
class Match:
    """One kept pair with its metrics and verdict (``match``, ``partial`` or ``different``)."""

    candidate: Candidate
    metrics: PairMetrics
    source: str  # "exact" (from the checkpoints) or "estimated" (from the fingerprints)
    verdict: str
    proof: Evidence  # what the verdict rests on: the values' evidence when they were read
    transform: list[Transform] = field(default_factory=list)
    permutation: Permutation | None = None
    selection: tuple[np.ndarray | None, np.ndarray | None] | None = None  # A's rows, A's columns

    @property
    def strength(self) -> float:
        return strength_of(self.metrics)


def strength_of(metrics: PairMetrics) -> float:
    if metrics.max_abs_diff == 0 and metrics.n:
        return 1.0  # equal values: a match even where correlation is undefined (all zeros)
    return abs(metrics.correlation) if metrics.correlation is not None else 0.0


def judge(
    candidate: Candidate, metrics: PairMetrics, p_threshold: float, looks: int = 1
) -> tuple[str, Evidence]:
    """The verdict and the evidence it rests on: the shortlist's evidence from the fingerprints
    and, where the values were read, theirs (``significance.exact_evidence``), the stronger of
    the two at twice its p-value. The values see far more of a large matrix; the samples are the
    whole of a small one. ``looks``: how many candidates the pair was chosen from without the
    fingerprints' evidence clearing the threshold (its p-value is multiplied by it).

    Related pairs are ``match`` when the measured |correlation| reaches ``policy.MATCH``, else
    ``partial``; ``different`` when the evidence does not clear ``p_threshold``, or (judged on the
    fingerprints alone) the measured correlation has the other sign than the estimate."""
    if candidate.identical:
        return "match", candidate.evidence
    checked = exact_evidence(metrics.row_sums, metrics.col_sums, metrics.correlation)
    proof = scaled(strongest(candidate.evidence, checked), looks)
    if proof.p_value > p_threshold or (checked is None and _sign_flipped(candidate, metrics)):
        return "different", proof
    return ("match" if strength_of(metrics) >= policy.MATCH else "partial"), proof


def _sign_flipped(candidate: Candidate, metrics: PairMetrics) -> bool:
    """The measured correlation has the other sign than the estimate that chose the pair."""
    return (metrics.correlation or 0.0) * candidate.estimate < 0 and strength_of(metrics) < 1.0
