"""`python -m extract.reencode`: AVION's layout, size, rate, chunks; resume; one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from extract.avion_layout import ChunkedVideo, is_avion_chunks
from extract.reencode import MARKER, ReencodeConfig, reencode
from extract.synthetic import SyntheticConfig, generate
from extract.video import probe_video, read_video_frames
from tests.cli import one_error_line

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, one_cpu: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; `one_cpu` pins it to one core (what FFmpeg and x264 count)."""
    pin = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_cpu else None
    return subprocess.run([sys.executable, "-m", "extract.reencode", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, preexec_fn=pin)


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def synthetic(root: Path, width: int, height: int, segments: int) -> Path:
    """Two synthetic 60 fps videos (P01_01, P02_01); returns the raw video root."""
    generate(
        SyntheticConfig(
            out=root, videos=2, videos_per_participant=1, val_videos=1, test_videos=0,
            segments_per_video=segments, width=width, height=height, fps=60.0,
            min_duration=2.5, max_duration=3.5, clutter=5, workers=1,
        )
    )  # fmt: skip
    return root / "videos"


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~42 s videos at 96x64: three chunks each."""
    return synthetic(tmp_path_factory.mktemp("raw"), 96, 64, 12)


@pytest.fixture(scope="module")
def chunks(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chunks")
    assert reencode(ReencodeConfig(videos=raw, out=out, short_side=48)) == {
        "videos": 2, "skipped": 0, "chunks": 6}
    return out


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_layout_rate_size_and_timestamps(raw: Path, chunks: Path) -> None:
    assert is_avion_chunks(chunks)
    for participant, video in (("P01", "P01_01"), ("P02", "P02_01")):
        folder = chunks / participant / f"{video}.MP4"
        names = sorted(p.name for p in folder.iterdir())
        assert names == [MARKER, "0.MP4", "15.MP4", "30.MP4"]
        infos = [probe_video(folder / f"{s}.MP4") for s in (0, 15, 30)]
        assert [i.fps for i in infos] == [30.0] * 3
        assert {(i.width, i.height) for i in infos} == {(72, 48)}  # 96x64 -> short side 48
        assert infos[0].num_frames == infos[1].num_frames == 450
        source = probe_video(raw / participant / "videos" / f"{video}.MP4")
        total = 900 + infos[2].num_frames
        assert abs(total / 30 - source.num_frames / source.fps) <= 1 / 30  # same duration
        marker = json.loads((folder / MARKER).read_text())
        assert marker["chunks"] == 3 and marker["frames"] == total
        with av.open(str(folder / "15.MP4")) as container:  # each chunk's time starts at 0
            stream = container.streams.video[0]
            first = next(container.decode(stream))
            assert float(first.pts * stream.time_base) == 0.0


def test_default_is_avion_320p_even_width(tmp_path: Path) -> None:
    """Through the CLI at AVION's defaults: 94x60 -> 320 high, width 501.3 rounded to even."""
    raw = synthetic(tmp_path / "raw", 94, 60, 3)
    out = tmp_path / "chunks"
    result = run("--videos", str(raw), "--out", str(out), "--participants", "P02")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["P02"]
    info = probe_video(out / "P02" / "P02_01.MP4" / "0.MP4")
    assert (info.width, info.height, info.fps) == (502, 320, 30.0)
    # the first frames are raw frames 0, 2, 4 scaled up (codec tolerance)
    chunk = ChunkedVideo(out, "P02", "P02_01").read_frames([0, 1, 2]).astype(np.float32)
    video = raw / "P02" / "videos" / "P02_01.MP4"
    source = read_video_frames(video, [1, 3, 5]).astype(np.float32)
    small = torch.nn.functional.interpolate(torch.from_numpy(chunk).permute(0, 3, 1, 2),
                                            size=(60, 94), mode="area").permute(0, 2, 3, 1)
    assert np.abs(small.numpy() - source).mean() < 4.0
    # the same bytes from a run on one core: libx264's threads do not follow the core count
    # (PyAV's default, one x264 slice per core, gave other bytes here on 2 cores)
    pinned = tmp_path / "pinned"
    result = run("--videos", str(raw), "--out", str(pinned), "--participants", "P02",
                 one_cpu=True)
    assert result.returncode == 0, result.stderr[-2000:]
    chunk = Path("P02") / "P02_01.MP4" / "0.MP4"
    assert same_bytes(out / chunk, pinned / chunk)


def test_complete_videos_are_skipped(raw: Path, chunks: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    before = stamps(copy / "P01" / "P01_01.MP4")
    result = run("--videos", str(raw), "--out", str(copy), "--short-side", "48")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 chunks written, 2 videos already complete" in result.stdout
    assert stamps(copy / "P01" / "P01_01.MP4") == before


def test_deleted_chunk_alone_is_rewritten(raw: Path, chunks: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    folder = copy / "P01" / "P01_01.MP4"
    (folder / "15.MP4").unlink()
    (folder / "15.MP4.partial").write_bytes(b"half a chunk")  # what a kill leaves
    before = stamps(folder)
    counts = reencode(ReencodeConfig(videos=raw, out=copy, short_side=48))
    assert counts == {"videos": 2, "skipped": 1, "chunks": 1}
    after = stamps(folder)
    assert sorted(after) == [MARKER, "0.MP4", "15.MP4", "30.MP4"]  # the .partial is gone
    assert {k: after[k] for k in ("0.MP4", "30.MP4", MARKER)} == {
        k: before[k] for k in ("0.MP4", "30.MP4", MARKER)}
    # decoded after a seek into the raw video, chunk 15 is the same file as before
    assert same_bytes(folder / "15.MP4", chunks / "P01" / "P01_01.MP4" / "15.MP4")


def test_killed_run_continues(raw: Path, chunks: Path, tmp_path: Path) -> None:
    """A run killed while writing the last chunk: no marker yet, a .partial, 0 and 15 done."""
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    folder = copy / "P02" / "P02_01.MP4"
    marker = (folder / MARKER).read_text()
    (folder / MARKER).unlink()
    (folder / "30.MP4").rename(folder / "30.MP4.partial")
    before = stamps(folder)
    result = run("--videos", str(raw), "--out", str(copy), "--short-side", "48",
                 "--workers", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 chunks written, 1 videos already complete" in result.stdout
    after = stamps(folder)
    assert sorted(after) == [MARKER, "0.MP4", "15.MP4", "30.MP4"]
    assert after["0.MP4"] == before["0.MP4"] and after["15.MP4"] == before["15.MP4"]
    assert (folder / MARKER).read_text() == marker
    assert same_bytes(folder / "30.MP4", chunks / "P02" / "P02_01.MP4" / "30.MP4")


def test_other_settings_are_refused(raw: Path, chunks: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(chunks, copy)
    line = one_error_line(run("--videos", str(raw), "--out", str(copy), "--short-side", "64"))
    assert "written with" in line and "'short_side': 48" in line and "rerun" not in line


def test_bad_inputs_are_one_error_line(raw: Path, tmp_path: Path) -> None:
    line = one_error_line(run("--videos", str(tmp_path / "absent"), "--out", str(tmp_path)))
    assert "raw video folder not found" in line
    line = one_error_line(run("--videos", str(raw), "--out", str(tmp_path / "o"),
                              "--participants", "P07"))
    assert "P07" in line
    broken = tmp_path / "broken"
    (broken / "P09" / "videos").mkdir(parents=True)
    (broken / "P09" / "videos" / "P09_01.MP4").write_bytes(b"not a video")
    line = one_error_line(run("--videos", str(broken), "--out", str(tmp_path / "o")))
    assert "1 of 1 videos failed" in line and "P09_01.MP4" in line
