-- shape_table: every tensor shape found in two indexes, with how many tensors of it each holds.
-- Views: a, b (two indexes written by `weightidx index`)
-- Parameters: none
-- Columns:
--   shape    BIGINT[]  the tensor shape
--   a_count  BIGINT    tensors of that shape in index a
--   b_count  BIGINT    tensors of that shape in index b
-- Rows: shapes present in either index, most parameters first.
WITH tensors AS (
    SELECT 'a' AS side, shape, numel FROM a
    UNION ALL
    SELECT 'b' AS side, shape, numel FROM b
)
SELECT
    shape,
    count(*) FILTER (WHERE side = 'a') AS a_count,
    count(*) FILTER (WHERE side = 'b') AS b_count
FROM tensors
GROUP BY shape
ORDER BY max(numel) DESC, shape;
