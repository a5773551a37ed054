-- dtype_summary: tensors, parameters and bytes per dtype of one index.
-- Views: t (one index written by `weightidx index`)
-- Parameters: none
-- Columns:
--   dtype       VARCHAR  safetensors dtype name
--   tensors     BIGINT   number of tensors of that dtype
--   parameters  HUGEINT  elements across those tensors
--   bytes       HUGEINT  bytes across those tensors
-- Rows: one per dtype, most bytes first.
SELECT
    dtype,
    count(*) AS tensors,
    sum(numel) AS parameters,
    sum(nbytes) AS bytes
FROM t
GROUP BY dtype
ORDER BY bytes DESC, dtype;
