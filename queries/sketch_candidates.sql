-- sketch_candidates: the most similar same-view tensor pairs of two indexes, by sketch alone.
-- Views: a, b (two indexes written by `weightidx index`)
-- Parameters:
--   $limit  how many rows (BIGINT)
-- Columns:
--   a_key      VARCHAR   tensor of A
--   b_key      VARCHAR   tensor of B with the same 2-D view
--   view       BIGINT[]  [rows, cols] of the shared view
--   estimate   DOUBLE    estimated correlation: cosine of the row and column sketches, each cut to
--                       its whole blocks of 16 (a partial block carries the mean: see estimate.py)
-- Rows: at most $limit pairs, strongest |estimate| first. The estimate's spread for unrelated
-- tensors is about 1/sqrt(number of values compared); `weightidx compare` verifies exactly.
SELECT
    a.key AS a_key,
    b.key AS b_key,
    [a.rows, a.cols] AS view,
    round(list_cosine_similarity(
        list_concat(a.row_sketch[:a.rows // 16 * 8], a.col_sketch[:a.cols // 16 * 8]),
        list_concat(b.row_sketch[:b.rows // 16 * 8], b.col_sketch[:b.cols // 16 * 8])), 4) AS estimate
FROM a JOIN b ON a.rows = b.rows AND a.cols = b.cols
WHERE a.supported AND b.supported AND a.numel > 0 AND (a.rows >= 16 OR a.cols >= 16)
ORDER BY abs(estimate) DESC NULLS LAST, a_key, b_key
LIMIT $limit;
