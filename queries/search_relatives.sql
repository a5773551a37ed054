-- search_relatives: rank the models of a catalog by how much of the query model they share.
-- Views: query (the model searched for), catalog (every index of the catalog, with its file in `filename`)
-- Parameters:
--   $strong  |estimated correlation| from which a weight matrix counts as a strong match (DOUBLE)
-- Columns:
--   filename         VARCHAR  the catalog index
--   model            VARCHAR  its model name
--   identical_share  DOUBLE   share of the query's tensors found byte-identical in it (any key)
--   strong_share     DOUBLE   share of the query's weight matrices whose same-key, same-view tensor
--                             there has a sketch estimate >= $strong
--   mean_estimate    DOUBLE   mean |estimate| over those same-key, same-view matrix pairs
-- Rows: one per catalog model, nearest relatives first. Matrices are 2-D views with both sides
-- > 1 and at least 4,096 values; identical means same dtype, shape, CRC-32 and power sums.
WITH q AS (
    SELECT key, dtype, shape, rows, cols, crc32, sum_x2, sum_x4,
           list_concat(row_sketch[:rows // 16 * 8], col_sketch[:cols // 16 * 8]) AS sketch,
           rows > 1 AND cols > 1 AND numel >= 4096 AS is_matrix
    FROM query WHERE supported AND numel > 0
), models AS (
    SELECT DISTINCT filename, model FROM catalog
), identical AS (
    -- no sketches here: each join streams the catalog once instead of holding it
    SELECT c.filename, count(DISTINCT q.key) AS tensors
    FROM catalog c JOIN q ON q.dtype = c.dtype AND q.shape = c.shape AND q.crc32 = c.crc32
                         AND q.sum_x2 = c.sum_x2 AND q.sum_x4 = c.sum_x4
    GROUP BY c.filename
), paired AS (
    SELECT c.filename,
           abs(list_cosine_similarity(
               q.sketch, list_concat(c.row_sketch[:c.rows // 16 * 8], c.col_sketch[:c.cols // 16 * 8]))) AS estimate
    FROM catalog c JOIN q ON q.key = c.key AND q.rows = c.rows AND q.cols = c.cols
    WHERE q.is_matrix
), scores AS (
    SELECT filename, avg(estimate) AS mean_estimate, count(*) FILTER (WHERE estimate >= $strong) AS strong
    FROM paired GROUP BY filename
)
SELECT
    m.filename,
    m.model,
    round(coalesce(i.tensors, 0) / (SELECT count(*) FROM q), 4) AS identical_share,
    round(coalesce(s.strong, 0) / greatest((SELECT count(*) FROM q WHERE is_matrix), 1), 4) AS strong_share,
    round(s.mean_estimate, 4) AS mean_estimate
FROM models m
LEFT JOIN identical i ON i.filename = m.filename
LEFT JOIN scores s ON s.filename = m.filename
ORDER BY strong_share DESC, mean_estimate DESC NULLS LAST, identical_share DESC, m.filename;
