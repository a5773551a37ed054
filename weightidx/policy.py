"""Every decision constant of the compare stage, named once, with where its value comes from.

Messages, the HTML report and the tests import these; no other module writes the numbers.
"""

from __future__ import annotations

#: Two questions are answered separately. *Related*: a pair's evidence clears the null of
#: unrelated tensors after the comparison-wide correction (``significance.py``). *Degree*: the
#: correlation of the two tensors. A related pair whose |correlation| reaches ``MATCH`` is a
#: ``match``; below it, a ``partial``; a compared pair that is not significantly related is
#: ``different``. 0.95 is the guide's "essentially identical" line: casts to fp8 (0.97-0.99)
#: and light fine-tuning stay above it, retraining falls below.
MATCH = 0.95

#: Benjamini-Hochberg false discovery rate over every pair (and slice offset) one comparison
#: tests. With no related pair at all it bounds the chance of any false claim (family-wise).
FALSE_DISCOVERY_RATE = 1e-3

#: The widest spread of the normal-equivalent z, in units of its nominal 1, measured on nulls
#: with the structure of trained weights (``benchmarks/calibrate_null.py``): an
#: independently trained real pair (all-MiniLM-L6-v2 against DINOv2-small, 9,369 pairs, max |z|
#: 4.3, as many independent normal draws give) and all-MiniLM-L6-v2 against copies with their
#: hidden axes permuted, which keep every interface structure (token rows, position tables) and
#: lose only the correspondence: spread 1.0-1.3, 1.45 for the sample of a position table.
NULL_INFLATION = 1.2

#: Fewer values than this cannot make a correlation significant at any useful level.
MIN_EVIDENCE_VALUES = 8

#: Tensors under this many values, and 1-D tensors, are marked ``weak_evidence``: a handful of
#: values can be shared by unrelated models (all-zero biases, LayerNorm weights of ones).
WEAK_NUMEL = 4096

#: A model-level share: ``copied`` / ``transformed`` / ``fine_tuned`` need at least this share of
#: B's weight matrices related to A's; fewer is ``partially_related``.
MAJORITY = 0.5

#: The guide's bands for its summary counts of *cosine* similarity (high, medium, low); they
#: bin the matches for display and decide nothing.
COSINE_HIGH = 0.95
COSINE_MEDIUM = 0.80

#: A gather (B's rows taken from A's rows: interleaved heads, pruned units, reordered rows) is
#: claimed only when B's rows are A's rows, not mixtures of them: at least this share of B's
#: rows come from distinct A rows, and the median row keeps this correlation with its source
#: on the columns that did not choose it. A row mixed from n rows (a projection of the hidden
#: space) reaches about 1/sqrt(n) with its best source: 0.3 for 128 rows, measured 0.2-0.4 on
#: ``tests/test_lineage.py``'s projected models; pruning then light retraining keeps 0.9 and more.
GATHER_DISTINCT = 0.99
GATHER_CORRELATION = 0.5

#: From the fingerprints alone (``compare/block_gather.py``), a unit of sketch blocks (a head)
#: enters a reported piece only when its own match is this clear after its Bonferroni factor:
#: the tensor-wide test decides that B's tensor is gathered from A's, this one which units are
#: named (a unit matched by chance among hundreds would otherwise be reported as a piece).
GATHER_UNIT_P = 0.01

#: Lineage across a width change (``compare/lineage.py``): an axis is decided "derived" when its
#: Gram comparison stands this many null spreads above the model's own controls and its score
#: (the correlation of the aligned Gram matrices) exceeds ``LINEAGE_SCORE``; the Mantel test's z
#: must reach the same to say two axes correspond. Calibrated by ``benchmarks/lineage_sweep.py``
#: (30 seeds: 0 of 60 independent twins reach it).
LINEAGE_Z = 5.0
LINEAGE_SCORE = 0.5

#: A scaled match whose values differ from A's times the scale by no more than this (relative L2,
#: after the scale) holds A's values: bf16's rounding is at most 2^-8 = 0.0039 of a value.
SCALE_RESIDUAL = 0.004

#: A match's least-squares scale is reported as a ``scale`` transform only when it is this far
#: from 1 (bf16 rounding moves it by about 0.004; a real rescale, such as fp8 storage without its
#: scale, by orders of magnitude more). For a quantised B the bound is the quantisation's own
#: (``engine._quantisation_shrink``) when that is larger.
SCALE_TOLERANCE = 0.02

#: Bits per weight of each GGUF type (ggml's block sizes, ``gguf.GGML_QUANT_SIZES``: bytes per
#: block · 8 / values per block; ``tests/test_formats.py`` checks the table against the package).
GGUF_BITS_PER_WEIGHT = {
    "Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "Q8_1": 10.0,
    "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "Q8_K": 9.125,
    "IQ1_S": 1.5625, "IQ1_M": 1.75, "IQ2_XXS": 2.0625, "IQ2_XS": 2.3125, "IQ2_S": 2.5625,
    "IQ3_XXS": 3.0625, "IQ3_S": 3.4375, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    "TQ1_0": 1.6875, "TQ2_0": 2.0625, "MXFP4": 4.25,
}  # fmt: skip

#: The largest relative L2 error ``‖dequant(quant(W)) − W‖ / ‖W‖`` each scheme leaves on real
#: weights, times ``QUANTISATION_MARGIN``: a quantised match that differs from A by more was
#: changed before it was quantised. Measured by ``python benchmarks/quantisation_error.py``
#: (2-D weights of all-MiniLM-L6-v2, its fine-tune and DINOv2-small; 2026-11-30).
QUANTISATION_ERROR = {
    # fp8 e4m3 with a scale per tensor, row or 128x128 block: measured 0.0264-0.0267
    "fp8-scaled": 0.040,
    "fp8-tensor": 0.040,
    "fp8-channel": 0.040,
    "fp8-block128": 0.040,
    # int8 with a scale per row (bitsandbytes SCB; ONNX per axis): 0.0344; one scale per tensor:
    # 0.3953 (a tensor with outliers keeps few levels for the rest: hardly anything is told)
    "int8-bnb": 0.052,
    "int8-channel": 0.052,
    "uint8-channel": 0.052,
    "int8-tensor": 0.593,
    "uint8-tensor": 0.593,
    # 4-bit with a scale and zero per 128 inputs: 0.1246; NF4 per 64 values: 0.1023; FP4: 0.2137
    "gptq-int4": 0.187,
    "awq-int4": 0.187,
    "nf4-bnb": 0.154,
    "fp4-bnb": 0.321,
}
QUANTISATION_MARGIN = 1.5

#: GGUF types follow ``error ≈ GGUF_ERROR_CONSTANT · 2^-bits``: the largest ``error · 2^bits``
#: measured over Q4_0 … Q8_0 and Q6_K (same benchmark) times the margin; K- and IQ-quants
#: spend their bits better than the legacy types the constant comes from, so it bounds them.
GGUF_ERROR_CONSTANT = 6.0  # measured largest error · 2^bits: 4.00 (Q8_0), 3.47 (Q4_0), 2.09 (Q6_K)


def quantisation_error(scheme: str) -> float | None:
    """The largest relative L2 error quantisation by ``scheme`` leaves (module constants), or
    None for a scheme not measured (no claim is made about it)."""
    if scheme in QUANTISATION_ERROR:
        return QUANTISATION_ERROR[scheme]
    if scheme in GGUF_BITS_PER_WEIGHT:
        return GGUF_ERROR_CONSTANT * 2.0 ** -GGUF_BITS_PER_WEIGHT[scheme]
    return None
