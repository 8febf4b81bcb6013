"""`fusion.partial_sums` (the Triton kernels' last backward step) under Triton's interpreter;
on the GPU it runs inside the scan's tests (test_ssm_triton)."""

from __future__ import annotations

from tests.fusion.triton_interpreter import run_interpreted

INTERPRETER_SCRIPT = r"""
import torch

from tests.fusion.triton_interpreter import patch_numpy_index

patch_numpy_index()

from fusion.partial_sums import sum_middle
from tests.fusion.test_ssm import assert_close

g = torch.Generator().manual_seed(0)
# sizes off the tiles; one output or several splitting the flattened sum, each in its own
# dtype (two outputs: the first rows of x the first output's); a few rows (long K tiles)
x = torch.randn(5, 37, 70, generator=g)
y, y2 = torch.empty(3, 70, dtype=torch.bfloat16), torch.empty(2, 70)
sum_middle(x, y, y2)
assert_close(y.float(), x[:3].sum(1), 1e-2)
assert_close(y2, x[3:].sum(1), 1e-5)
y = torch.empty(7, 5)
sum_middle(x.reshape(1, 5 * 37, 70)[:, :, :35].contiguous().view(1, 185, 35), y.view(-1))
assert_close(y.view(-1), x.reshape(185, 70)[:, :35].sum(0), 1e-5)
# many rows (short K tiles)
x = torch.randn(70, 20, 33, generator=g)
y, y2 = torch.empty(40, 33), torch.empty(30, 33, dtype=torch.float16)
sum_middle(x, y, y2)
assert_close(y, x[:40].sum(1), 1e-5)
assert_close(y2.float(), x[40:].sum(1), 1e-2)
# three outputs splitting the columns (the per-row dA, dD, dbias)
x = torch.randn(1, 9, 10, generator=g)
outs = (torch.empty(2, 3, dtype=torch.bfloat16), torch.empty(3), torch.empty(1))
sum_middle(x, *outs)
assert_close(torch.cat([o.float().view(-1) for o in outs]), x[0].sum(0), 1e-2)
assert_close(outs[2], x[0, :, 9].sum(0, keepdim=True), 1e-5)
try:
    sum_middle(x, torch.empty(4, 2))
    raise AssertionError("a wrong output size was accepted")
except ValueError as e:
    assert "contiguous outputs of [8] elements for a (1, 9, 10) sum" in str(e), e
print("interpreter: all cases match")
"""


def test_sums_under_the_interpreter():
    """One output, two splitting the rows, three splitting the columns; bad sizes refused."""
    run_interpreted(INTERPRETER_SCRIPT)
