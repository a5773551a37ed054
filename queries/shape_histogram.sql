-- shape_histogram: how many tensors of each shape one index holds, and their parameters.
-- Views: t (one index written by `weightidx index`)
-- Parameters: none
-- Columns:
--   shape       BIGINT[]  the tensor shape
--   tensors     BIGINT    tensors of that shape
--   parameters  HUGEINT   elements across them
--   example     VARCHAR   one key of that shape (the first in key order)
-- Rows: one per shape, most parameters first.
SELECT
    shape,
    count(*) AS tensors,
    sum(numel) AS parameters,
    min(key) AS example
FROM t
GROUP BY shape
ORDER BY parameters DESC, shape;
