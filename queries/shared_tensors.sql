-- shared_tensors: tensors that are byte-for-byte the same in two or more indexed models.
-- Views: catalog (every index given, with its file in `filename`)
-- Parameters: none
-- Columns:
--   crc32    VARCHAR    CRC-32 of the shared bytes
--   dtype    VARCHAR    safetensors dtype
--   shape    BIGINT[]   tensor shape
--   models   BIGINT     how many models hold it
--   holders  VARCHAR[]  model:key for each holder, sorted
-- Rows: one per shared tensor content, most widely shared and largest first. "Same bytes"
-- here means same dtype, shape, CRC-32 and power sums; `weightidx compare` re-checks bytes.
SELECT
    crc32,
    dtype,
    shape,
    count(DISTINCT filename) AS models,
    list_sort(list(model || ':' || key)) AS holders
FROM catalog
WHERE supported AND numel > 0
GROUP BY crc32, dtype, shape, sum_x2, sum_x4
HAVING count(DISTINCT filename) > 1
ORDER BY models DESC, max(numel) DESC, crc32;
