"""benchmarks/profile_step.py's kernel groups: names as the H200 profiles print them."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.profile_step import kernel_group, kernel_group_table, kernel_names


def test_kernels_of_a_compiled_graphed_step_fall_into_their_groups() -> None:
    names = {  # from benchmarks/results/profile_step_h200_compiled_full.md
        "_scan_bwd_kernel": "scan",
        "_conv_grad_kernel": "token convolutions",
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT": "GEMMs",
        "void cutlass::Kernel2<cutlass_80_simt_sgemm_64x64_8x5_nn_align1>(T1::Params)": "GEMMs",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>": (
            "optimizer and clipping (multi-tensor)"),
        "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float, ...>>": (
            "reductions (aten)"),
        "triton_per_fused__to_copy__unsafe_view_add_div_expand_57": "inductor's fused kernels",
        "triton_poi_fused_cat_transpose_37": "inductor's fused kernels",
        "Memcpy DtoD (Device -> Device)": "copies",
        "void at::native::vectorized_elementwise_kernel<4, ...>": "other aten elementwise",
        "some_new_kernel": "other",
    }
    for name, group in names.items():
        assert kernel_group(name) == group, name


def test_group_table_sums_time_and_counts_per_step() -> None:
    kernels = [SimpleNamespace(key=key, count=count, self_device_time_total=us)
               for key, count, us in (("_scan_bwd_kernel", 10, 6000.0),
                                      ("_scan_fwd_kernel", 10, 2000.0),
                                      ("triton_poi_fused_gelu_1", 5, 2000.0))]
    lines = kernel_group_table(kernels, steps=5).splitlines()
    assert lines[1].split()[:3] == ["scan", "1600.0", "4.0"]  # first: the largest group
    assert lines[1].split()[-1] == "80.0%"
    assert lines[2].split()[-3:] == ["400.0", "1.0", "20.0%"]


def test_kernel_names_are_whole_and_ranked_by_time() -> None:
    adam = ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::"
            "(anonymous namespace)::TensorListMetadata<4>, FusedAdamMathFunctor<float, 4>>")
    kernels = [SimpleNamespace(key=key, count=count, self_device_time_total=us)
               for key, count, us in (("_scan_fwd_kernel", 10, 2000.0), (adam, 20, 950.0),
                                      ("triton_poi_fused_gelu_1", 5, 3000.0))]
    lines = kernel_names(kernels, steps=5, top=2).splitlines()
    assert len(lines) == 3 and lines[1].split()[:3] == ["600.0", "1.0", "triton_poi_fused_gelu_1"]
    assert lines[2].endswith("_scan_fwd_kernel")
    assert adam in kernel_names(kernels, steps=5, top=3)  # whole, not cut at 55 characters
