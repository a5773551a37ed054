-- block_std_profile: the layer-wise spread of one index: mean std of the weight matrices per block.
-- Views: t (one index written by `weightidx index`)
-- Parameters: none
-- Columns:
--   block       BIGINT  block number found in the key (blocks.N., layers.N., layer.N., h.N., ...)
--   matrices    BIGINT  weight matrices in that block (2-D views, both sides > 1)
--   mean_std    DOUBLE  mean of their standard deviations
--   mean_absmax DOUBLE  mean of their largest magnitudes
-- Rows: one per block, in block order. Keys without a block number are left out.
WITH numbered AS (
    SELECT
        TRY_CAST(regexp_extract(key, '(?:^|\.)(?:blocks|layers|layer|h|block|transformer_blocks)\.(\d+)\.', 1) AS BIGINT)
            AS block,
        std,
        absmax
    FROM t
    WHERE rows > 1 AND cols > 1 AND std IS NOT NULL
)
SELECT
    block,
    count(*) AS matrices,
    round(avg(std), 6) AS mean_std,
    round(avg(absmax), 5) AS mean_absmax
FROM numbered
WHERE block IS NOT NULL
GROUP BY block
ORDER BY block;
