-- candidate_groups: groups of same-view tensors of A and of B whose 2-D views fit one of the transforms compare tests.
-- Views: a (index of model A), b (index of model B)
-- Parameters:
--   $block  sketch block size (slices must start on a block boundary)
-- Columns:
--   relation  VARCHAR    same       a and b share one 2-D view (same shape, or a reshape such as conv <-> linear)
--                        transpose  b is a transposed (rows and cols swapped)
--                        a_in_b_rows / a_in_b_cols  a is a slice of b along rows / cols (b fused: q,k,v -> qkv)
--                        b_in_a_rows / b_in_a_cols  b is a slice of a (a fused, b split)
--   a_keys    VARCHAR[]  A's tensors of one view (rows, cols), in key order
--   b_keys    VARCHAR[]  B's tensors of one view that fits A's view under the relation
-- Every a_key x b_key pair fits; compare tests them all, or narrows groups of thousands
-- (weightidx/compare/candidates.py). Key names are never used here: this works on anonymised
-- names like onnx::MatMul_471.
WITH ga AS (
    SELECT rows, cols, list(key ORDER BY key) AS keys
    FROM main.a WHERE supported AND numel > 0 GROUP BY rows, cols
), gb AS (
    SELECT rows, cols, list(key ORDER BY key) AS keys
    FROM main.b WHERE supported AND numel > 0 GROUP BY rows, cols
)
SELECT 'same' AS relation, ga.keys AS a_keys, gb.keys AS b_keys
FROM ga JOIN gb ON ga.rows = gb.rows AND ga.cols = gb.cols
UNION ALL
SELECT 'transpose', ga.keys, gb.keys
FROM ga JOIN gb ON ga.rows = gb.cols AND ga.cols = gb.rows AND ga.rows > 1 AND ga.cols > 1
UNION ALL
SELECT 'a_in_b_rows', ga.keys, gb.keys
FROM ga JOIN gb ON ga.cols = gb.cols AND ga.rows < gb.rows AND ga.rows % $block = 0
UNION ALL
SELECT 'a_in_b_cols', ga.keys, gb.keys
FROM ga JOIN gb ON ga.rows = gb.rows AND ga.cols < gb.cols AND ga.cols % $block = 0 AND ga.rows > 1
UNION ALL
SELECT 'b_in_a_rows', ga.keys, gb.keys
FROM ga JOIN gb ON ga.cols = gb.cols AND gb.rows < ga.rows AND gb.rows % $block = 0
UNION ALL
SELECT 'b_in_a_cols', ga.keys, gb.keys
FROM ga JOIN gb ON ga.rows = gb.rows AND gb.cols < ga.cols AND gb.cols % $block = 0 AND gb.rows > 1
ORDER BY relation, a_keys[1], b_keys[1];
