"""Frame sampling, decoding (PyAV and JPEG folders), preprocessing and the clip dataset.

Every synthetic frame shows its own 1-based number in binary (10 vertical stripes, white =
1), so a decoded frame proves which frame it is even after lossy compression.
"""

from __future__ import annotations

import logging
import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from extract.synthetic import SyntheticConfig, generate
from extract.video import (
    AVION_MEAN,
    AVION_STD,
    CLIP_MEAN,
    CLIP_STD,
    PRESETS,
    ClipDataset,
    FusedCropScale,
    OutsideVideoError,
    VideoError,
    anticipation_window,
    avion_frame_ids,
    frames_on_30fps,
    native_for_30fps,
    preprocess_clip,
    preprocess_preset,
    probe_video,
    read_frame_folder,
    read_video_frames,
    sample_frame_ids,
    select_frames,
    torchvision_clip,
    video_path,
)
from features.annotations import load_split

W, H, STRIPES = 80, 48, 10


def numbered_frame(number: int) -> np.ndarray:
    bits = [(number >> (STRIPES - 1 - b)) & 1 for b in range(STRIPES)]
    row = np.repeat(np.array(bits, dtype=np.uint8) * 255, W // STRIPES)
    return np.repeat(np.repeat(row[None, :, None], H, 0), 3, 2)


def frame_number(frame: np.ndarray) -> int:
    stripes = frame.reshape(frame.shape[0], STRIPES, -1, 3).mean(axis=(0, 2, 3))
    return int("".join("1" if s > 127 else "0" for s in stripes), 2)


def write_video(path: Path, n_frames: int, fps: Fraction = Fraction(50), gop: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "10", "g": str(gop), "preset": "ultrafast", "bf": "2"}
        for n in range(1, n_frames + 1):
            frame = av.VideoFrame.from_ndarray(numbered_frame(n), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_jpegs(folder: Path, n_frames: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, n_frames + 1):
        Image.fromarray(numbered_frame(n)).save(folder / f"frame_{n:010d}.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def ek100_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<root>/P01/videos/P01_01.MP4` (200 frames, 50 fps) and its `rgb_frames` twin."""
    root = tmp_path_factory.mktemp("ek100")
    write_video(root / "videos" / "P01" / "videos" / "P01_01.MP4", 200)
    write_video(root / "videos" / "P02" / "videos" / "P02_01.MP4", 90, fps=Fraction(30000, 1001))
    write_jpegs(root / "rgb_frames" / "P01" / "P01_01", 200)
    return root


def segments(*rows: tuple[str, int, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [(nid, nid[:3], nid[:6], a, b) for nid, a, b in rows],
        columns=["narration_id", "participant_id", "video_id", "start_frame", "stop_frame"],
    )


# ---------------------------------------------------------------------------- selection


def test_sampling_is_avions_segment_centres() -> None:
    # AVION get_frame_ids(1, 33, 16, jitter=False): midpoints of linspace(1, 33, 17), floored
    assert sample_frame_ids(1, 33) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32]
    assert sample_frame_ids(100, 260, 4) == [120, 160, 200, 240]
    short = sample_frame_ids(10, 14)
    assert len(short) == 16 and set(short) <= set(range(10, 15)) and short == sorted(short)
    assert sample_frame_ids(7, 7, 3) == [7, 7, 7]
    with pytest.raises(ValueError):
        sample_frame_ids(10, 9)


def test_anticipation_window_from_fps() -> None:
    assert anticipation_window(1000, 30) == (910, 970)  # 2 s ending 1 s before, at 30 fps
    assert anticipation_window(1000, 50) == (850, 950)
    assert anticipation_window(1000, 59.94) == (820, 940)
    sel = select_frames(1000, 1100, task="anticipation", fps=50)
    assert sel.ids == tuple(sample_frame_ids(850, 950)) and not sel.clamped
    assert max(sel.ids) < 1000 - 50


def test_clamping_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="extract.video"):
        sel = select_frames(150, 240, total_frames=200, name="P01_01 P01_01_7")
    assert (sel.first, sel.last, sel.clamped) == (150, 200, True)  # 40 of 91 frames past
    assert max(sel.ids) <= 200
    [record] = caplog.records
    assert "P01_01 P01_01_7" in record.message and "240" in record.message
    assert "\n" not in record.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="extract.video"):
        early = select_frames(40, 80, task="anticipation", fps=30, total_frames=200, name="v")
    assert early.first == 1 and early.last == 10 and early.clamped and len(caplog.records) == 1


# ----------------------------------------------------------------------------- decoding


def test_probe(ek100_videos: Path) -> None:
    info = probe_video(ek100_videos / "videos" / "P01" / "videos" / "P01_01.MP4")
    assert (info.fps, info.num_frames, info.width, info.height) == (50.0, 200, W, H)


@pytest.mark.parametrize("video", ["P01/videos/P01_01.MP4", "P02/videos/P02_01.MP4"])
def test_decoded_frame_is_the_one_asked_for(ek100_videos: Path, video: str) -> None:
    path = ek100_videos / "videos" / video
    n = probe_video(path).num_frames
    ids = [1, 2, 37, 38, 64, n - 1, n, 37]  # keyframes, B-frames, repeats, out of order
    frames = read_video_frames(path, ids)
    assert frames.shape == (len(ids), H, W, 3) and frames.dtype == np.uint8
    assert [frame_number(f) for f in frames] == ids
    deep = sample_frame_ids(n - 40, n)  # a segment deep in the video: seek, not decode all
    assert [frame_number(f) for f in read_video_frames(path, deep)] == deep


def test_frames_past_the_real_end_repeat_the_last(ek100_videos: Path) -> None:
    path = ek100_videos / "videos" / "P01" / "videos" / "P01_01.MP4"
    assert [frame_number(f) for f in read_video_frames(path, [199, 200, 205])] == [199, 200, 200]


def test_jpeg_folder(ek100_videos: Path) -> None:
    folder = ek100_videos / "rgb_frames" / "P01" / "P01_01"
    assert [frame_number(f) for f in read_frame_folder(folder, [5, 1, 200])] == [5, 1, 200]
    with pytest.raises(VideoError, match="frame_0000000201.jpg"):
        read_frame_folder(folder, [201])


def test_missing_and_corrupt_videos_raise_video_error(tmp_path: Path) -> None:
    missing = tmp_path / "P09" / "videos" / "P09_01.MP4"
    with pytest.raises(VideoError, match=str(missing)):
        read_video_frames(missing, [1])
    broken = tmp_path / "broken.MP4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    with pytest.raises(VideoError, match="broken.MP4") as info:
        probe_video(broken)
    assert info.value.path == str(broken)
    whole = write_video(tmp_path / "whole.MP4", 30).read_bytes()
    truncated = tmp_path / "truncated.MP4"
    truncated.write_bytes(whole[: len(whole) // 2])  # moov atom lost, as in a killed copy
    with pytest.raises(VideoError, match="truncated.MP4"):
        read_video_frames(truncated, [1, 2])


# ---------------------------------------------------------------------------- preprocess


def test_preprocess_resizes_crops_and_normalises() -> None:
    frames = np.zeros((3, 120, 200, 3), dtype=np.uint8)
    frames[..., 0] = 255
    clip = preprocess_clip(frames, size=64)
    assert clip.shape == (3, 3, 64, 64) and clip.dtype == torch.float32
    expect = [(1 - CLIP_MEAN[0]) / CLIP_STD[0], -CLIP_MEAN[1] / CLIP_STD[1]]
    torch.testing.assert_close(clip[0].mean(), torch.tensor(expect[0]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clip[1].mean(), torch.tensor(expect[1]), rtol=1e-4, atol=1e-4)
    # centre crop of a portrait frame keeps the middle rows
    tall = np.zeros((1, 200, 64, 3), dtype=np.uint8)
    tall[:, 100:, :] = 255
    out = preprocess_clip(tall, size=64)
    assert out[0, 0, 0].mean() < out[0, 0, -1].mean()


# ------------------------------------------------------------------------------- dataset


def test_paths(tmp_path: Path) -> None:
    assert video_path(tmp_path, "P01", "P01_01") == tmp_path / "P01/videos/P01_01.MP4"
    assert video_path(tmp_path, "P01", "P01_01", "rgb_frames") == tmp_path / "P01/P01_01"


def test_dataset_video_and_jpeg_layouts_agree(ek100_videos: Path) -> None:
    rows = segments(("P01_01_0", 20, 60), ("P01_01_1", 150, 160))
    video = ClipDataset(rows, ek100_videos / "videos", num_frames=4, size=32)
    jpeg = ClipDataset(
        rows, ek100_videos / "rgb_frames", layout="rgb_frames", num_frames=4, size=32
    )
    assert video.frames(0).ids == (25, 35, 45, 55)
    assert video.manifest()["normalisation"]["mean"] == [255.0 * m for m in CLIP_MEAN]
    clip, nid, error = video[0]
    assert clip.shape == (3, 4, 32, 32) and nid == "P01_01_0" and error == ""
    jclip, _, jerror = jpeg[0]
    assert jerror == "" and (clip - jclip).abs().mean() < 0.1  # same frames, codec noise only


def test_dataset_marks_failures_and_clamps(
    ek100_videos: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = segments(("P01_01_0", 190, 205), ("P03_01_0", 1, 10), ("P01_01_1", 1, 5))
    data = ClipDataset(rows, ek100_videos / "videos", num_frames=4, size=32)
    with caplog.at_level(logging.WARNING, logger="extract.video"):
        clip, _, error = data[0]
    assert error == "" and "P01_01 P01_01_0" in caplog.text
    assert data.frames(0).last == 200
    clip, nid, error = data[1]
    assert nid == "P03_01_0" and "P03_01.MP4" in error and "not found" in error
    assert torch.count_nonzero(clip) == 0
    loader = DataLoader(data, batch_size=3, num_workers=2)
    [(clips, ids, errors)] = list(loader)
    assert clips.shape == (3, 3, 4, 32, 32) and list(ids) == list(rows.narration_id)
    assert [bool(e) for e in errors] == [False, True, False]
    strict = ClipDataset(rows, ek100_videos / "videos", num_frames=4, size=32, on_error="raise")
    with pytest.raises(VideoError, match="P03_01.MP4"):
        strict[1]


@pytest.mark.parametrize(
    ("start", "stop", "task"),
    [(250, 300, "recognition"), (180, 260, "recognition"), (20, 40, "anticipation")],
    ids=["wholly-past-the-end", "mostly-past-the-end", "wholly-before-the-start"],
)
def test_segment_outside_its_video_is_a_failure(
    ek100_videos: Path, start: int, stop: int, task: str
) -> None:
    with pytest.raises(OutsideVideoError, match=f"v \\[{task} {start}-{stop}\\]"):
        select_frames(start, stop, task=task, fps=50, total_frames=200, name="v")
    rows = segments(("P01_01_9", start, stop))
    data = ClipDataset(rows, ek100_videos / "videos", task=task, num_frames=4, size=32)
    clip, nid, error = data[0]  # a failed clip: zeros and an error, not the edge frame
    assert nid == "P01_01_9" and error.startswith(str(data.source(0)))
    assert ("past the video's last frame 200" if task == "recognition" else "before") in error
    assert torch.count_nonzero(clip) == 0


def test_frames_mostly_past_the_real_end_fail(ek100_videos: Path) -> None:
    path = ek100_videos / "videos" / "P01" / "videos" / "P01_01.MP4"
    with pytest.raises(VideoError, match="3 of 4 requested frames lie past .* last frame 200"):
        read_video_frames(path, [200, 210, 220, 230])


def test_dataset_anticipation(ek100_videos: Path) -> None:
    rows = segments(("P01_01_0", 180, 190))
    data = ClipDataset(rows, ek100_videos / "videos", task="anticipation", num_frames=4, size=32)
    sel = data.frames(0)
    assert (sel.first, sel.last) == (30, 130)  # 50 fps: [start - 150, start - 50]
    clip, _, error = data[0]
    assert error == ""
    with pytest.raises(ValueError, match="fps"):
        ClipDataset(rows, ek100_videos / "rgb_frames", layout="rgb_frames", task="anticipation")
    jpeg = ClipDataset(
        rows,
        ek100_videos / "rgb_frames",
        layout="rgb_frames",
        task="anticipation",
        fps=50,
        num_frames=4,
        size=32,
    )
    assert jpeg.frames(0) == sel


def test_decoder_seeks_instead_of_decoding_everything(tmp_path: Path) -> None:
    path = write_video(tmp_path / "long.MP4", 600, gop=10)
    stats: dict[str, int] = {}
    ids = [580, 590, 600]
    assert [frame_number(f) for f in read_video_frames(path, ids, stats=stats)] == ids
    assert stats["seeks"] == 1 and stats["decoded"] < 40
    spread = sample_frame_ids(1, 600, 8)  # a long segment: one seek per sampled frame
    frames = read_video_frames(path, spread, stats=stats)
    assert [frame_number(f) for f in frames] == spread
    assert stats["seeks"] >= 7 and stats["decoded"] < 150
    every = list(range(1, 601, 7))  # keyframe neighbours with B-frames, all found
    assert [frame_number(f) for f in read_video_frames(path, every, seek_gap_s=0.05)] == every


# ------------------------------------------------------------- AVION's preprocessing (#14)

# Expected ids produced by running AVION's own code outside this repository: the functions
# `get_frame_ids` and `datetime2sec` of avion/data/clip_dataset.py (AVION commit
# 31b00b6bc5d2c09f56b90643cd546cfe8a31c005), exec'd alone (decord absent) in /tmp, on the
# validation split of the `avion_data` fixture below, with `video_loader`'s chunk-path clamp
# `end_second = min(end_second, (len - 1) / 30)` and `get_frame_ids(int(np.round(second *
# 30)), int(np.round(end_second * 30)), 16, jitter=False)`; the video has 270 frames at 30
# fps. `_end` is the last segment moved to 8.333-9.167 s, past the video's end (9.0 s).
AVION_IDS = {
    "P03_01_0": ("00:00:00.57", "00:00:02.00", [18, 21, 23, 26, 29, 31, 34, 37, 39, 42, 45, 47, 50, 53, 55, 58]),  # noqa: E501
    "P03_01_1": ("00:00:02.30", "00:00:03.60", [70, 72, 75, 77, 79, 82, 84, 87, 89, 92, 94, 97, 99, 101, 104, 106]),  # noqa: E501
    "P03_01_2": ("00:00:04.13", "00:00:05.60", [125, 128, 130, 133, 136, 139, 141, 144, 147, 150, 152, 155, 158, 161, 163, 166]),  # noqa: E501
    "P03_01_3": ("00:00:06.00", "00:00:07.07", [181, 183, 185, 187, 189, 191, 193, 195, 197, 199, 201, 203, 205, 207, 209, 211]),  # noqa: E501
    "P03_01_4": ("00:00:07.43", "00:00:08.73", [224, 226, 229, 231, 233, 236, 238, 241, 243, 246, 248, 251, 253, 255, 258, 260]),  # noqa: E501
    "P03_01_4_end": ("00:00:08.333", "00:00:09.167", [250, 251, 252, 254, 255, 256, 257, 258, 260, 261, 262, 263, 264, 266, 267, 268]),  # noqa: E501
}


@pytest.fixture(scope="module")
def avion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset the AVION_IDS were computed on (one validation video, 30 fps)."""
    root = tmp_path_factory.mktemp("avion")
    generate(SyntheticConfig(out=root, videos=5, videos_per_participant=2, val_videos=1,
                             test_videos=1, segments_per_video=5, width=64, height=48,
                             fps=30.0, max_duration=1.5, workers=1))
    return root


def avion_segments(root: Path) -> pd.DataFrame:
    rows = load_split(root / "annotations", "validation").segments
    end = rows.iloc[[-1]].assign(narration_id="P03_01_4_end", start_timestamp="00:00:08.333",
                                 stop_timestamp="00:00:09.167")
    return pd.concat([rows, end], ignore_index=True)


def test_avion_frame_ids_match_avions_code(avion_data: Path) -> None:
    rows = avion_segments(avion_data)
    assert {r.narration_id: (r.start_timestamp, r.stop_timestamp) for r in rows.itertuples()} == {
        k: v[:2] for k, v in AVION_IDS.items()}
    data = ClipDataset(rows, avion_data / "videos", num_frames=16, size=32,
                       preprocess=PRESETS["avion"])
    for i, nid in enumerate(rows["narration_id"]):
        plan = data.clip_plan(i)
        assert (plan.narration_id, plan.fps) == (nid, 30.0)
        assert list(plan.frame_ids) == AVION_IDS[nid][2], nid
        assert list(plan.source_ids) == [k + 1 for k in AVION_IDS[nid][2]]  # 30 fps video
        assert plan.clamped == nid.endswith("_end")
    clip, _, error = data[len(rows) - 1]  # the clamped segment decodes
    assert error == "" and clip.shape == (3, 16, 32, 32)


def test_avion_timeline_refuses_a_window_mostly_past_the_end() -> None:
    with pytest.raises(OutsideVideoError, match="past the video's last frame 269"):
        avion_frame_ids(8.9, 10.0, 16, frames_30=270)
    assert avion_frame_ids(0.0, 1.0, 4).ids == tuple(sample_frame_ids(0, 30, 4))
    assert avion_frame_ids(0.05, 0.15, 2).first == 2  # np.round(1.5) = 2 (half to even)


@pytest.mark.parametrize("fps", [Fraction(50), Fraction(60000, 1001), Fraction(30)])
def test_native_frames_are_those_ffmpegs_fps_filter_keeps(fps: Fraction) -> None:
    """A raw 50/59.94 fps video read on the 30 fps timeline gives the frames a 30 fps
    re-encode (FFmpeg's fps filter, run here through PyAV) holds."""
    graph = av.filter.Graph()
    chain = [graph.add_buffer(width=W, height=H, format="rgb24", time_base=1 / fps),
             graph.add("fps", "30"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    graph.configure()
    kept = []
    for n in range(1, 121):
        frame = av.VideoFrame.from_ndarray(numbered_frame(n), format="rgb24")
        frame.pts = n - 1
        graph.push(frame)
        while True:
            try:
                kept.append(frame_number(graph.pull().to_ndarray(format="rgb24")) - 1)
            except (av.BlockingIOError, av.EOFError):
                break
    k = len(kept) - 2  # the filter holds back the last frames until EOF
    assert native_for_30fps(range(k), fps) == kept[:k]
    assert frames_on_30fps(120, fps) == round(120 * 30 / fps)


def bilinear_no_antialias(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Reference for torchvision 0.14's tensor Resize (torchvision is not installed here, so
    written from its documented semantics: bilinear, align_corners=False, no antialias)."""
    h, w = x.shape[-2:]

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # source coordinates scale * (dst + 1/2) - 1/2 with a float32 scale, rounded once to
        # float32 (a fused multiply-add, as PyTorch's CPU kernel computes them); exact float64
        # coordinates differ by up to 2.2e-5 after normalisation
        scale = np.float64(np.float32(n_in / n_out))
        src = np.float32(scale * (np.arange(n_out) + 0.5) - 0.5).astype(np.float64)
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    rows = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def test_torchvision_path_matches_avions_non_fused_transform() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)  # landscape, 90 -> 32
    out = torchvision_clip(frames, 32)
    x = frames.transpose(3, 0, 1, 2).astype(np.float64)  # (C, T, H, W) as AVION permutes
    resized = bilinear_no_antialias(x, 32, int(32 * 160 / 90))
    left = int(round((resized.shape[-1] - 32) / 2.0))
    crop = resized[..., :, left : left + 32]
    mean, std = np.array(AVION_MEAN)[:, None, None, None], np.array(AVION_STD)[:, None, None, None]
    np.testing.assert_allclose(out.numpy(), (crop - mean) / std, atol=1e-5, rtol=0)


# Issue 14: expected values produced by running AVION's own transform outside this repository
# (numbers only; no AVION code here). AVION commit 31b00b6bc5d2c09f56b90643cd546cfe8a31c005
# (github.com/zhaoyue-zephyrus/AVION), scripts/main_lavila_finetune_cls.py, `main`: the
# `val_transform` built without --fused-decode-crop, i.e. torchvision.transforms.Compose of
# avion.data.transforms.Permute([3, 0, 1, 2]), torchvision.transforms.Resize(crop_size),
# torchvision.transforms.CenterCrop(crop_size) and
# torchvision.transforms._transforms_video.NormalizeVideo(mean, std) with the 'openai' norm_style
# mean/std (= AVION_MEAN/AVION_STD), crop_size 32, applied to
# torch.from_numpy(frames.astype(np.float32)) as avion/data/clip_dataset.py `video_loader` hands
# frames over (float32 before Permute). Run in a separate venv, /tmp/tvenv (Python 3.11.7,
# `pip install torch==2.14.1 torchvision==0.29.1 numpy`: torch 2.14.1+cu130 on the CPU,
# torchvision 0.29.1+cu130, numpy 2.4.6), with the AVION checkout on sys.path:
# `/tmp/tvenv/bin/python /tmp/h14/avion_ref.py`. Resize was given antialias=False explicitly:
# AVION pins torchvision 0.14.1 (docs/INSTALL.md), whose Resize default antialias=None means no
# antialiasing for tensors, while 0.17+ defaults to True (here that would move values by up to
# 1.87). Positions: np.sort(np.random.default_rng(14).choice(9216, 48, replace=False)) into the
# flattened (3, 3, 32, 32) output; values printed as float32, rounded to 8 decimals; sums in
# float64 over the float32 output. Observed: our output equals AVION's bit for bit (max |d| = 0).
AVION_RUN_VALUES = {
    4: 0.55367678, 584: -0.47091475, 673: 0.97944421, 813: -0.25905135, 857: 1.02741194,
    1377: 1.58934617, 1521: -0.65297431, 1677: -0.16927011, 1851: 0.09142717, 2104: 0.32205862,
    2406: -0.03293244, 2750: -0.60794008, 3104: -0.85548353, 3193: 1.00672054, 3310: 0.92142940,
    3667: -0.46705693, 3884: 0.07228477, 4262: 1.58893991, 4291: 0.72241247, 4666: -0.49167904,
    5033: 0.57327121, 5080: 0.45183367, 5143: -0.41275442, 5259: -0.69140273, 5886: -0.82242256,
    5947: 0.98872507, 5984: 1.21954095, 5991: -0.64745039, 6446: 1.30389571, 6578: 0.80711889,
    6661: -0.10176212, 6768: 0.51617390, 6858: -0.34531459, 6982: -1.34906507, 6999: 0.57143569,
    7179: -0.88901126, 7253: 0.85539454, 7325: 1.47465825, 7497: -0.87548512, 7620: -0.62911063,
    7690: -1.12919676, 7892: -0.19027713, 7928: 0.89646578, 7955: -0.29528832, 8213: -1.01495576,
    8349: -0.17345871, 8941: -1.17607343, 9014: 1.51319361,
}  # fmt: skip
AVION_RUN_SUM, AVION_RUN_SUMSQ = 2260.2354167111916, 5444.074053894008


def test_torchvision_path_matches_numbers_from_running_avions_transform() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    out = torchvision_clip(frames, 32).numpy().astype(np.float64)
    assert out.shape == (3, 3, 32, 32)
    idx = np.sort(np.random.default_rng(14).choice(out.size, 48, replace=False))
    assert idx.tolist() == list(AVION_RUN_VALUES)
    expected = np.array(list(AVION_RUN_VALUES.values()))
    np.testing.assert_allclose(out.ravel()[idx], expected, atol=1e-5, rtol=0)
    atol = 1e-5 * out.size  # 1e-5 per element, summed
    assert abs(out.sum() - AVION_RUN_SUM) <= atol
    assert abs((out * out).sum() - AVION_RUN_SUMSQ) <= atol * 2 * np.abs(out).max()


@pytest.mark.parametrize("scaler", ["bilinear", "bicubic"])
def test_fused_crop_scale_is_ffmpegs_filter_within_the_stated_bound(
    avion_data: Path, scaler: str
) -> None:
    """FFmpeg scales the YUV frame (chroma at half resolution) and converts to RGB after;
    a float resize of the same frame's RGB centre square differs by a mean |d| under one grey
    level (measured 0.76 bilinear, 0.79 bicubic on 400x300 frames), 99 % of values within 5."""
    generate(SyntheticConfig(out=avion_data / "big", videos=5, videos_per_participant=2,
                             val_videos=1, test_videos=1, segments_per_video=1, width=400,
                             height=300, fps=30.0, max_duration=1.5, workers=1))
    path = next((avion_data / "big" / "videos").rglob("*.MP4"))
    ids = list(range(1, 40, 6))
    fused = FusedCropScale(224, scaler)
    assert fused.filter(400, 300) == f"crop=300:300:50:0,scale=224:224:flags={scaler}"
    out = torch.as_tensor(read_video_frames(path, ids, convert=fused)).permute(0, 3, 1, 2)
    rgb = torch.as_tensor(read_video_frames(path, ids)).permute(0, 3, 1, 2).float()
    ref = F.interpolate(rgb[..., :, 50:350], size=(224, 224), mode=scaler, antialias=True,
                        align_corners=False).clamp(0, 255)
    diff = (out.float() - ref).abs()
    assert out.dtype == torch.uint8 and out.shape == (len(ids), 3, 224, 224)
    assert diff.mean() < 1.0 and diff.flatten().quantile(0.99) < 5.0
    assert diff.mean() > 0  # it is FFmpeg's filter, not torch's resize
    jpeg = fused(read_video_frames(path, ids[:1])[0])  # rgb24 frames (rgb_frames) also go in
    assert jpeg.shape == (224, 224, 3)


def test_manifest_names_every_choice(avion_data: Path) -> None:
    rows = avion_segments(avion_data)
    manifest = ClipDataset(rows, avion_data / "videos", preprocess=PRESETS["avion"]).manifest()
    assert manifest["preprocess"] == {
        "name": "avion", "mean": list(AVION_MEAN), "std": list(AVION_STD), "scale": "0-255",
        "timeline": "avion-30fps", "timeline_fps": 30.0, "resize": "fused",
        "scaler": "bilinear", "precision": "fp16"}  # fmt: skip
    assert manifest["normalisation"]["mean"] == list(AVION_MEAN)
    old = ClipDataset(rows, avion_data / "videos").manifest()["preprocess"]
    assert (old["name"], old["timeline"], old["resize"], old["precision"]) == (
        "ours-v1", "native", "antialias", "bf16")
    changed = preprocess_preset("avion", resize="torchvision", precision="bf16")
    assert changed.name == "avion+precision=bf16+resize=torchvision"
    assert preprocess_preset("avion", resize=None) is PRESETS["avion"]


def test_avion_timeline_from_rgb_frames_needs_their_fps(avion_data: Path) -> None:
    rows = avion_segments(avion_data)
    with pytest.raises(ValueError, match="native fps"):
        ClipDataset(rows, avion_data / "rgb", layout="rgb_frames", preprocess=PRESETS["avion"])


def test_chunked_videos_are_kept_one_per_video_and_bounded(avion_data: Path,
                                                           tmp_path: Path) -> None:
    """`ClipDataset._chunked_video`: the same `ChunkedVideo` for every clip of a video, at most
    `CHUNKED_VIDEOS_KEPT` of them, the least recently used dropped (building one reads
    nothing, so these videos need not exist)."""
    data = ClipDataset(avion_segments(avion_data), tmp_path, layout="avion-chunks",
                       preprocess=PRESETS["avion"])
    data.CHUNKED_VIDEOS_KEPT = 2
    first = data._chunked_video("P01", "P01_01")
    assert data._chunked_video("P01", "P01_01") is first
    assert (first.root, first.participant, first.video_id) == (tmp_path, "P01", "P01_01")
    second = data._chunked_video("P01", "P01_02")
    data._chunked_video("P01", "P01_01")  # now the most recently used
    data._chunked_video("P02", "P02_01")  # drops P01_02
    assert list(data._chunked) == [("P01", "P01_01"), ("P02", "P02_01")]
    assert data._chunked_video("P01", "P01_01") is first
    assert data._chunked_video("P01", "P01_02") is not second  # built again
    assert len(data._chunked) == 2


def test_avion_chunks_layout_gives_avions_ids(avion_data: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same segments read from AVION's chunked copy (written by extract.reencode); the
    video's folder is listed once and its chunk probed once for all its clips (the dataset
    keeps one `ChunkedVideo` per video), also in a pickled copy (a DataLoader worker's)."""
    from extract import avion_layout
    from extract.reencode import ReencodeConfig, reencode

    reencode(ReencodeConfig(videos=avion_data / "videos", out=tmp_path / "chunks",
                            participants=("P03",), short_side=48, preset="ultrafast"))
    listed: list[Path] = []
    probed: list[Path] = []
    listdir, probe = avion_layout.os.listdir, avion_layout.probe_video
    monkeypatch.setattr(avion_layout.os, "listdir", lambda p: listed.append(p) or listdir(p))
    monkeypatch.setattr(avion_layout, "probe_video", lambda p: probed.append(p) or probe(p))
    rows = avion_segments(avion_data)
    data = ClipDataset(rows, tmp_path / "chunks", layout="avion-chunks", size=32,
                       preprocess=PRESETS["avion"])
    for i, nid in enumerate(rows["narration_id"]):
        plan = data.clip_plan(i)
        assert plan.sources == (str(tmp_path / "chunks/P03/P03_01.MP4/0.MP4"),)
        assert list(plan.frame_ids) == AVION_IDS[nid][2] and plan.fps == 30.0, nid
    copy = pickle.loads(pickle.dumps(data))  # as DataLoader workers get it (before a load)
    assert [copy.clip_plan(i) for i in range(len(rows))] == [
        data.clip_plan(i) for i in range(len(rows))]
    clip, _, error = data[len(rows) - 1]
    assert error == "" and clip.shape == (3, 16, 32, 32)
    assert len(rows) == 6 and set(rows["video_id"]) == {"P03_01"}
    assert listed == [tmp_path / "chunks/P03/P03_01.MP4"]  # not once per clip
    assert probed == [tmp_path / "chunks/P03/P03_01.MP4/0.MP4"]
    with pytest.raises(ValueError, match="avion-30fps"):
        ClipDataset(rows, tmp_path / "chunks", layout="avion-chunks")
