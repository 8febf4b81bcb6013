"""AVION's chunked layout: detection, AVION's chunk arithmetic and end clamp, decoded frames."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from extract import avion_layout
from extract.avion_layout import ChunkedVideo, is_avion_chunks
from extract.reencode import ReencodeConfig, reencode
from extract.synthetic import SyntheticConfig, generate
from extract.video import VideoError, read_video_frames
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]
RAW_FPS = 60  # EK100's usual rate: the 30 fps timeline takes every other raw frame

# What AVION's own `video_loader` (avion/data/clip_dataset.py, zhaoyue-zephyrus/AVION commit
# 31b00b6bc5d2c09f56b90643cd546cfe8a31c005, chunk_len=15, fps=30, clip_length=16,
# jitter=False) asked decord for on the `chunks` fixture below: (chunk start second, relative
# frame ids) per segment. Produced outside the repository by running that function with a
# decord stand-in that opened our chunk files (len = frame count) and recorded each
# `get_batch` call; it also agreed on all 24 segments of the synthetic train/validation CSVs.
# The fixture's chunk lengths: P01_01 450 + 450 + 353 frames, P02_01 450 + 450 + 376.
AVION_READS = [
    ("P01_01", 14.0, 16.0, [(0, [421, 425, 429, 433, 436, 440, 444, 448]),
                            (15, [1, 5, 9, 13, 16, 20, 24, 28])]),  # crosses 15 s
    ("P01_01", 29.9, 30.2, [(15, [447, 447, 448, 448, 449]),
                            (30, [0, 0, 1, 1, 2, 2, 3, 4, 4, 5, 5])]),
    ("P01_01", 40.0, 45.0, [(30, [301, 304, 308, 311, 314, 317, 321, 324, 327, 330, 334, 337,
                                  340, 343, 347, 350])]),  # end clamped to the last frame
    ("P01_01", 41.7, 50.0, [(30, [351] * 16)]),
    ("P01_01", 0.0, 0.3, [(0, [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 5, 6, 7, 7, 8, 8])]),
    ("P01_01", 14.99, 14.995, [(0, [449] * 16)]),  # clamped inside a full chunk, start > end
    ("P02_01", 29.0, 44.999, [(15, [432]), (30, [7, 33, 58, 83, 109, 134, 159, 185, 210, 235,
                                                 261, 286, 311, 337, 362])]),
]  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two ~42 s synthetic videos at 60 fps, 96x64 (P01_01 train, P02_01 validation)."""
    root = tmp_path_factory.mktemp("raw")
    generate(
        SyntheticConfig(
            out=root, videos=2, videos_per_participant=1, val_videos=1, test_videos=0,
            segments_per_video=12, width=96, height=64, fps=float(RAW_FPS), min_duration=2.5,
            max_duration=3.5, clutter=5, workers=1,
        )
    )  # fmt: skip
    return root / "videos"


@pytest.fixture(scope="module")
def chunks(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AVION's layout at the raw short side (64: no scaling, only codec noise)."""
    out = tmp_path_factory.mktemp("chunks")
    reencode(ReencodeConfig(videos=raw, out=out, short_side=64, crf=12))
    return out


@pytest.fixture(scope="module")
def whole(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same re-encode unchunked (one chunk longer than the videos)."""
    out = tmp_path_factory.mktemp("whole")
    reencode(ReencodeConfig(videos=raw, out=out, short_side=64, chunk_s=1000, crf=12))
    return out


def test_detection(raw: Path, chunks: Path, tmp_path: Path) -> None:
    assert is_avion_chunks(chunks)
    assert not is_avion_chunks(raw)  # <P>/videos/<id>.MP4 files
    assert not is_avion_chunks(tmp_path / "absent")
    (tmp_path / "P01" / "P01_01.MP4").mkdir(parents=True)
    (tmp_path / "P01" / "P01_01.MP4" / "notes.txt").write_text("no chunks")
    assert not is_avion_chunks(tmp_path)
    (tmp_path / "P01" / "P01_01.MP4" / "0.MP4").write_bytes(b"")
    assert is_avion_chunks(tmp_path)


def test_layout_as_avion_reads_it(chunks: Path) -> None:
    assert ChunkedVideo(chunks, "P01", "P01_01").starts() == [0, 15, 30]
    # 2505 raw frames at 60 fps = 41.75 s; FFmpeg's fps filter rounds the end to 1253 frames
    assert ChunkedVideo(chunks, "P01", "P01_01").duration() == pytest.approx(30 + 353 / 30)
    assert ChunkedVideo(chunks, "P01", "P01_01").clamp_end_s(50.0) == pytest.approx(30 + 352 / 30)
    assert ChunkedVideo(chunks, "P01", "P01_01").clamp_end_s(20.0) == 20.0


@pytest.mark.parametrize(("video", "start_s", "end_s", "expected"), AVION_READS)
def test_chunk_reads_match_avion(
    chunks: Path, video: str, start_s: float, end_s: float, expected: list
) -> None:
    participant = video[:3]
    chunked = ChunkedVideo(chunks, participant, video)
    ids = chunked.clip_frame_ids(start_s, end_s)
    reads = chunked.chunk_reads(ids)
    assert [(int(path.stem), local) for path, local in reads] == expected
    assert all(path.parent == chunks / participant / f"{video}.MP4" for path, _ in reads)


def test_one_listing_and_one_probe_per_chunk(
    chunks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `ChunkedVideo` lists its folder once and probes each chunk once, however many calls."""
    listed: list[str] = []
    probed: list[str] = []
    listdir, probe = avion_layout.os.listdir, avion_layout.probe_video
    monkeypatch.setattr(avion_layout.os, "listdir", lambda p: listed.append(p) or listdir(p))
    monkeypatch.setattr(avion_layout, "probe_video", lambda p: probed.append(p) or probe(p))
    video = ChunkedVideo(chunks, "P01", "P01_01")
    video.duration()  # as extract.video's ClipDataset asks, then decodes
    ids = video.clip_frame_ids(14.0, 16.0)
    video.clamp_end_s(16.0)
    video.chunk_reads(ids)
    video.read_frames(ids)
    assert listed == [video.folder]
    assert sorted(Path(p).name for p in probed) == ["0.MP4", "15.MP4", "30.MP4"]


def test_crossing_segment_reads_the_raw_frames_at_their_times(
    raw: Path, chunks: Path, whole: Path
) -> None:
    ids = ChunkedVideo(chunks, "P01", "P01_01").clip_frame_ids(14.0, 16.0)
    assert ids[0] < 450 <= ids[-1]  # both chunks
    chunked = ChunkedVideo(chunks, "P01", "P01_01").read_frames(ids).astype(np.float32)
    unchunked = ChunkedVideo(whole, "P01", "P01_01", chunk_s=1000).read_frames(ids)
    unchunked = unchunked.astype(np.float32)
    assert chunked.shape == (16, 64, 96, 3)
    assert np.abs(chunked - unchunked).mean() < 3.0  # two x264 encodes of the same frames
    # frame i of the 30 fps timeline is raw frame 2i (0-based) of the 60 fps video: it is
    # the closest raw frame: never farther than its neighbours (a static stretch may repeat a
    # raw frame exactly) and closer on average over the clip
    video = raw / "P01" / "videos" / "P01_01.MP4"
    for offset in (-2, 2):
        truth = read_video_frames(video, [2 * i + 1 for i in ids]).astype(np.float32)
        shifted = read_video_frames(video, [2 * i + 1 + offset for i in ids]).astype(np.float32)
        right = np.abs(chunked - truth).mean(axis=(1, 2, 3))
        wrong = np.abs(chunked - shifted).mean(axis=(1, 2, 3))
        assert right.max() < 4.0
        assert (right <= wrong).all() and right.mean() < 0.9 * wrong.mean(), (right, wrong)


def test_end_of_video(chunks: Path) -> None:
    video = ChunkedVideo(chunks, "P01", "P01_01")
    ids = video.clip_frame_ids(40.0, 45.0)
    assert ids[-1] == 900 + 350 and video.read_frames(ids).shape[0] == 16
    assert video.read_frames([900 + 352]).shape[0] == 1  # the last frame
    with pytest.raises(VideoError, match=r"frame 1253 is past the video's last frame 1252"):
        video.chunk_reads([1250, 1253])
    with pytest.raises(VideoError, match="frame 1500 is past"):
        video.chunk_reads([1500])
    with pytest.raises(VideoError, match="starts after the video's last frame"):
        video.clip_frame_ids(44.0, 46.0)


def test_missing_chunk_and_gap(chunks: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    (copy / "P01" / "P01_01.MP4" / "15.MP4").unlink()
    with pytest.raises(VideoError, match=r"chunk 15\.MP4 is missing"):
        ChunkedVideo(copy, "P01", "P01_01").read_frames([10])
    with pytest.raises(VideoError, match="chunk folder not found"):
        ChunkedVideo(copy, "P01", "P01_09").chunk_reads([0])
    (copy / "P02" / "P02_01.MP4" / "20.MP4").write_bytes(b"")
    with pytest.raises(VideoError, match="multiple of 15"):
        ChunkedVideo(copy, "P02", "P02_01").starts()
    with pytest.raises(VideoError, match="not 25"):
        ChunkedVideo(chunks, "P02", "P02_01", fps=25).read_frames([0])


def test_missing_chunk_is_one_error_line(chunks: Path, tmp_path: Path) -> None:
    """Through run_cli, as the extraction CLI reports it: one line naming the folder."""
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    (copy / "P01" / "P01_01.MP4" / "0.MP4").unlink()
    code = (
        "import sys; from features.errors import run_cli; "
        "from extract.avion_layout import ChunkedVideo; "
        f"video = ChunkedVideo({str(copy)!r}, 'P01', 'P01_01'); "
        "sys.exit(run_cli(lambda argv: video.read_frames([3])))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    line = one_error_line(result)
    assert str(copy / "P01" / "P01_01.MP4") in line and "chunk 0.MP4 is missing" in line
