-- dtype_summary: tensors, parameters and bytes per dtype of one index.
-- Parameters:
--   $index  path of an index (Parquet written by `weightidx index`)
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
FROM read_parquet($index)
GROUP BY dtype
ORDER BY bytes DESC, dtype;
