-- largest_tensors: the biggest tensors of one index with their statistics.
-- Views: t (one index written by `weightidx index`)
-- Parameters:
--   $limit  how many rows (BIGINT)
-- Columns:
--   key    VARCHAR   tensor name
--   shape  BIGINT[]  tensor shape
--   dtype  VARCHAR   safetensors dtype
--   numel  BIGINT    elements
--   mb     DOUBLE    megabytes in the file
--   std    DOUBLE    standard deviation
--   absmax DOUBLE    largest finite magnitude
-- Rows: at most $limit, largest first.
SELECT
    key,
    shape,
    dtype,
    numel,
    round(nbytes / 1e6, 1) AS mb,
    round(std, 5) AS std,
    round(absmax, 4) AS absmax
FROM t
ORDER BY numel DESC, key
LIMIT $limit;
