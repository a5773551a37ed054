-- compare_candidates: pairs of tensors (a, b) whose 2-D views fit one of the transforms compare tests.
-- Views: a (index of model A), b (index of model B)
-- Parameters:
--   $block  sketch block size (slices must start on a block boundary)
-- Columns:
--   a_key     VARCHAR  tensor of A
--   b_key     VARCHAR  tensor of B
--   relation  VARCHAR  same       a and b share one 2-D view (same shape, or a reshape such as conv <-> linear)
--                      transpose  b is a transposed (rows and cols swapped)
--                      a_in_b_rows / a_in_b_cols  a is a slice of b along rows / cols (b fused: q,k,v -> qkv)
--                      b_in_a_rows / b_in_a_cols  b is a slice of a (a fused, b split)
--   identical BOOLEAN  same dtype, same shape, same CRC-32 and power sums: byte-identical in all likelihood
-- Key names are never used: this works on anonymised names like onnx::MatMul_471.
WITH a AS (
    SELECT key, dtype, shape, rows, cols, crc32, sum_x2, sum_x4
    FROM main.a WHERE supported AND numel > 0
), b AS (
    SELECT key, dtype, shape, rows, cols, crc32, sum_x2, sum_x4
    FROM main.b WHERE supported AND numel > 0
)
SELECT a.key AS a_key, b.key AS b_key, 'same' AS relation,
       (a.dtype = b.dtype AND a.shape = b.shape AND a.crc32 = b.crc32
        AND a.sum_x2 = b.sum_x2 AND a.sum_x4 = b.sum_x4) AS identical
FROM a JOIN b ON a.rows = b.rows AND a.cols = b.cols
UNION ALL
SELECT a.key, b.key, 'transpose', false
FROM a JOIN b ON a.rows = b.cols AND a.cols = b.rows AND a.rows > 1 AND a.cols > 1
UNION ALL
SELECT a.key, b.key, 'a_in_b_rows', false
FROM a JOIN b ON a.cols = b.cols AND a.rows < b.rows AND a.rows % $block = 0
UNION ALL
SELECT a.key, b.key, 'a_in_b_cols', false
FROM a JOIN b ON a.rows = b.rows AND a.cols < b.cols AND a.cols % $block = 0 AND a.rows > 1
UNION ALL
SELECT a.key, b.key, 'b_in_a_rows', false
FROM a JOIN b ON a.cols = b.cols AND b.rows < a.rows AND b.rows % $block = 0
UNION ALL
SELECT a.key, b.key, 'b_in_a_cols', false
FROM a JOIN b ON a.rows = b.rows AND b.cols < a.cols AND b.cols % $block = 0 AND b.rows > 1
ORDER BY b_key, a_key, relation;
