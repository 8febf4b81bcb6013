"""benchmarks/scan_sass.py: the scan kernels compiled for sm_90 on a machine without a GPU."""

import importlib.util
import json
import re

import pytest

from benchmarks import scan_sass

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")


def test_compiles_both_kernels_and_reads_their_resources(tmp_path):
    out = scan_sass.main(["--block-t", "2", "--out", str(tmp_path / "sass")])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["kernel"] for r in rows] == ["forward", "backward"]
    for r in rows:
        assert r["BLOCK_T"] == 2
        assert 0 < r["registers"] <= 255 and r["instructions"] > 100
        assert r["MUFU"] > 0 and r["LDG"] > 0 and r["STG"] > 0  # exp2, loads, stores
    assert rows[1]["SHFL"] > 0  # the backward's sums over channels cross lanes
    assert "| backward | 2 |" in out.with_suffix(".md").read_text()


def test_the_backward_walks_its_own_chunks(tmp_path):
    out = scan_sass.main(["--block-t", "8", "--block-t-bwd", "2", "--out",
                          str(tmp_path / "chunks")])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["kernel"], r["BLOCK_T"]) for r in rows] == [("forward", 8), ("backward", 2)]
    assert rows[1]["maxnreg"] == 168  # the launch's cap for the head's unit-stride states


def test_a_register_cap_reaches_ptxas(tmp_path):
    out = scan_sass.main(["--block-t", "2", "--maxnreg-bwd", "64", "--out",
                          str(tmp_path / "capped")])
    backward = json.loads(out.with_suffix(".json").read_text())["rows"][1]
    assert backward["maxnreg"] == 64 and backward["registers"] <= 64


def test_the_backward_loads_a_steps_states_in_one_vector(tmp_path):
    """The backward's (channels, states) tiles split the states as (n / 8, 8) so that a
    thread's 8 states are consecutive: B_t and C_t are one 16-byte load each. With 2-D tiles
    two lanes held a channel's states interleaved and each state was its own load (90 loads
    in this compile, 44 with the split)."""
    out = scan_sass.main(["--out", str(tmp_path / "loads")])
    backward = json.loads(out.with_suffix(".json").read_text())["rows"][1]
    assert backward["LDG"] <= 56, backward


def test_the_backward_sums_over_channels_on_the_lanes_its_ptx_assumes(tmp_path):
    """`fusion.ssm_triton._sum_channels` (a step's dB and dC summed over the 16 channel
    lanes by PTX shuffles) assumes lane l holds channel l % 16 and a thread 8 consecutive
    states: `check_lane_layout` (run on every compiled backward) passes the sm_90 compile and
    refuses any other layout. 8 shuffles a sum where Triton's butterfly per state took 32
    (288 in this compile's chunk loop)."""
    from benchmarks.sass import compile_launch
    from fusion.ssm_triton import check_lane_layout

    (_, *_), (_, kernel, args, kwargs) = scan_sass.recorded_launches(scan_sass.SassConfig())
    assert kwargs["LANE_SUMS"]
    ttgir = compile_launch(kernel, args, kwargs).asm["ttgir"]
    assert ttgir.count("tt.elementwise_inline_asm") == 2 * kwargs["BLOCK_T"]  # dB, dC a step
    check_lane_layout(ttgir)
    tile = re.search(r"tt\.elementwise_inline_asm .*: (tensor<16x2x8xf32, (#\w+)>) ->", ttgir)
    tile, alias = tile.group(1), tile.group(2)
    layout = re.search(rf"^{alias} = (.*)$", ttgir, re.M).group(1)

    def relaid(old: str, new: str) -> str:  # the tile's layout with one field changed
        assert old in layout, (old, layout)
        return ttgir.replace(f"{alias} = {layout}", f"{alias} = {layout.replace(old, new)}")

    order = re.search(r"order = \[[\d, ]+\]", layout).group(0)
    for same in ("sizePerThread = [1, 1, 1], threadsPerWarp = [16, 2, 1], warpsPerCTA = "
                 "[1, 1, 1], order = [0, 1, 2]", "sizePerThread = [1, 1, 4], threadsPerWarp = "
                 "[16, 2, 1], warpsPerCTA = [1, 1, 1], order = [2, 0, 1]"):
        # the same lanes and registers written otherwise (both seen in sm_90 compiles)
        check_lane_layout(ttgir.replace(f"{alias} = {layout}",
                                        f"{alias} = #ttg.blocked<{{{same}}}>"))
    for other in (relaid("threadsPerWarp = [16, 2, 1]", "threadsPerWarp = [2, 16, 1]"),
                  relaid(order, "order = [1, 0, 2]"),  # lane l: state group l % 2
                  relaid("warpsPerCTA = [1, 1, 1]", "warpsPerCTA = [2, 1, 1]"),
                  ttgir.replace(f"{tile} ->", "tensor<16x2x8xf32, #other> ->"),
                  ttgir.replace(f"{tile} ->", "tensor<32x8xf32, #other> ->"),
                  ttgir.replace("tt.elementwise_inline_asm", "tt.other_op")):
        assert other != ttgir
        with pytest.raises(RuntimeError, match="lane_sums=False"):
            check_lane_layout(other)
    out = scan_sass.main(["--out", str(tmp_path / "sums")])
    loop = json.loads(out.with_suffix(".json").read_text())["rows"][1]["main_loop"]
    assert loop["SHFL"] <= 8 * 2 * kwargs["BLOCK_T"] + 40, loop
    off = scan_sass.main(["--no-lane-sums", "--out", str(tmp_path / "off")])
    loop_off = json.loads(off.with_suffix(".json").read_text())["rows"][1]["main_loop"]
    assert loop_off["SHFL"] > 32 * 2 * kwargs["BLOCK_T"], loop_off  # tl.sum's butterflies
