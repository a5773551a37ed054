-- nonfinite_or_zero: tensors holding NaN or Inf, and tensors that are all zeros.
-- Views: t (one index written by `weightidx index`)
-- Parameters: none
-- Columns:
--   key      VARCHAR  tensor name
--   dtype    VARCHAR  safetensors dtype
--   numel    BIGINT   elements
--   nans     BIGINT   NaN elements
--   infs     BIGINT   +Inf and -Inf elements
--   zeros    BIGINT   elements equal to zero
--   problem  VARCHAR  'nan/inf' or 'all zeros'
-- Rows: one per such tensor, in key order.
SELECT
    key,
    dtype,
    numel,
    nans,
    posinf + neginf AS infs,
    zeros,
    CASE WHEN nans + posinf + neginf > 0 THEN 'nan/inf' ELSE 'all zeros' END AS problem
FROM t
WHERE supported AND numel > 0 AND (nans + posinf + neginf > 0 OR zeros = numel)
ORDER BY key;
