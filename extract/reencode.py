"""Write AVION's chunked EK100 copy from the raw videos (resumable).

    python -m extract.reencode --videos RAW --out CHUNKS [--participants P01 P02] [--workers N]

Reads `RAW/<participant>/videos/<video_id>.MP4` (EK100's layout, as `extract.synthetic`
writes it) and writes `CHUNKS/<participant>/<video_id>.MP4/<start second>.MP4`, the layout
`extract.avion_layout` reads and AVION's own loader expects.

Why: AVION's fine-tuned weights only saw AVION's re-encodes; users with only the raw videos
need the same size, rate and chunking. What AVION publishes (zhaoyue-zephyrus/AVION at commit
31b00b6bc5d2c09f56b90643cd546cfe8a31c005): `datasets/README.md` says the EK100 videos are
cut "into 15-second-long chunks" with the smaller side resized, and names the copy
`EK100_320p_15sec_30fps_libx264`; `avion/data/clip_dataset.py` (`video_loader`) takes chunk
`c` to hold frames `c * fps ...` of one 30 fps timeline. The FFmpeg command itself is not
published (not in the repository), so this matches the published properties, not the bytes:

- matched: short side 320 (long side keeps the aspect ratio, rounded to even as FFmpeg's
  `scale=-2:320` does), 30 fps constant rate, libx264 yuv420p, chunks of exactly
  15 * 30 = 450 frames named by start second (the last one shorter), timestamps from 0 in
  each chunk so local frame k is global frame `c * 30 + k`;
- chosen here, possibly unlike AVION: FFmpeg's `fps` filter (frame n shows the last source
  frame starting before (n + 1/2) / 30 s) and `scale` filter (bicubic) through PyAV's
  libavfilter graph, libx264 at FFmpeg's defaults (crf 23, preset medium; plus x264's
  `cpu-independent`, below), no audio. So pixels differ from AVION's copy by codec noise,
  and possibly by one source frame where AVION's frame-rate conversion rounded differently
  (not verified).

Reproducible: the same raw video and settings give byte-identical chunks, on every run, under
load and after a resume (checked with PyAV 18.1, libavcodec 62, x264 core 165). Three things
made the bytes depend on more than the pixels, all fixed in `_Chunk`: PyAV opens
every codec with slice threading and FFmpeg's automatic thread count, so libx264 cut each
frame into one slice per core (at most one per 4 macroblock rows): a 320p chunk written on one
core differed from one written on two; and a decoded frame keeps its source picture type (I/P/B),
which FFmpeg's libx264 wrapper forces on x264, so the chunks copied the raw video's frame
types (the ffmpeg CLI clears them). Now libx264 always runs `ENCODER_THREADS` frame threads
(x264's own kind of threading; its default deterministic mode makes them repeatable) and picks
every frame type itself. Decoder and filter graph threads change no pixel (checked: 1, 4 and
automatic threads give identical frames). A third: on an AVX-512 Xeon, x264 wrote other bytes
from run to run for identical input frames (also single-threaded; 2-3 variants of a chunk in
6-8 runs), and not with its assembly limited to AVX2; so x264 runs with `cpu-independent`
("Ensure exact reproducibility across different cpus, as opposed to letting them select
different algorithms": x264.c's help; the option is in mirror/x264 @ dd6a303 x264.c), which
gave one variant of every chunk in 8 runs at two sizes, for ~2 % more time. Not checked
across CPU models.

Resumable: each chunk is written to `<start>.MP4.partial` and renamed when complete; a video
whose `.reencode.json` (written when its last chunk is done) lists chunks that all exist is
skipped; otherwise decoding seeks to the first missing chunk and only missing chunks are
written, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.filter import Graph
from av.video.frame import PictureType
from tqdm import tqdm

from extract.avion_layout import CHUNK_NAME, chunk_folder
from extract.video import VideoError
from features.config import cli
from features.errors import HarnessError

MARKER = ".reencode.json"
# libx264 frame threads per chunk, the same on every machine so the bytes are too; 4 is the
# fastest measured on 2 cores (a 15-s 320p chunk, decoding included: ~3.0 s, vs ~3.8 s for
# PyAV's default sliced threads and ~4.7 s single-threaded); --workers adds videos in parallel
ENCODER_THREADS = 4


@dataclass
class ReencodeConfig:
    """Write AVION's chunked EK100 copy (320p, 30 fps, libx264, 15-s chunks) from raw videos."""

    videos: Path
    """Raw EK100 videos: `<videos>/<participant>/videos/<video_id>.MP4`."""
    out: Path
    """Chunk root: `<out>/<participant>/<video_id>.MP4/<start second>.MP4`."""
    participants: tuple[str, ...] = ()
    """Only these participants (default: every participant folder under --videos)."""
    workers: int = 1
    """Videos re-encoded in parallel processes (1 = in this process)."""
    short_side: int = 320
    """Short side in pixels (AVION: 320); the long side keeps the aspect ratio, even."""
    fps: int = 30
    """Output frame rate (AVION: 30)."""
    chunk_s: int = 15
    """Chunk length in seconds (AVION: 15)."""
    crf: int = 23
    """libx264 constant rate factor (FFmpeg's default)."""
    preset: str = "medium"
    """libx264 preset (FFmpeg's default)."""


@dataclass(frozen=True)
class Settings:
    """What a finished chunk folder was written with; a rerun must use the same."""

    short_side: int
    fps: int
    chunk_s: int
    crf: int
    preset: str


def raw_videos(config: ReencodeConfig) -> list[tuple[str, str, Path]]:
    """(participant, video_id, path) of every raw video to re-encode, sorted."""
    root = config.videos
    if not root.is_dir():
        raise HarnessError(f"{root}: raw video folder not found (--videos)")
    found = sorted(
        (p.parent.parent.name, p.stem, p)
        for p in root.glob("*/videos/*")
        if p.suffix.lower() == ".mp4" and p.is_file()
    )
    if config.participants:
        absent = sorted(set(config.participants) - {p for p, _, _ in found})
        if absent:
            raise HarnessError(f"{root}: no raw videos of participant(s) {', '.join(absent)} "
                               "(expected <videos>/<participant>/videos/<video_id>.MP4)")
        found = [v for v in found if v[0] in config.participants]
    if not found:
        raise HarnessError(f"{root}: no raw videos <participant>/videos/<video_id>.MP4 here; "
                           "--videos must be the EK100 video root")
    return found


def _present(folder: Path) -> set[int]:
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for n in os.listdir(folder) if (m := CHUNK_NAME.match(n))}


def _finished(folder: Path, settings: Settings) -> int | None:
    """Chunk count from the folder's marker, None without one; other settings are refused."""
    marker = folder / MARKER
    if not marker.exists():
        return None
    try:
        done = json.loads(marker.read_text())
        written, chunks = Settings(**done["settings"]), int(done["chunks"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise HarnessError(f"{marker}: unreadable ({error}); delete it to re-check the "
                           "video's chunks") from None
    if written != settings:
        raise HarnessError(f"{folder}: written with {asdict(written)}, not {asdict(settings)}; "
                           "use another --out or the same settings")
    return chunks


def _filtered(container: Any, stream: Any, settings: Settings, seek_s: float) -> Iterator[Any]:
    """Frames on the output timeline (`pts` = 0-based frame number), from about `seek_s`."""
    if seek_s > 0:
        container.seek(int(seek_s / stream.time_base), stream=stream, backward=True)
    width, height = stream.codec_context.width, stream.codec_context.height
    size = f"-2:{settings.short_side}" if width >= height else f"{settings.short_side}:-2"
    graph = Graph()
    chain = [graph.add_buffer(template=stream), graph.add("fps", str(settings.fps)),
             graph.add("scale", size), graph.add("format", "yuv420p"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    graph.configure()
    origin = stream.start_time or 0

    def drain() -> Iterator[Any]:
        while True:
            try:
                yield graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return

    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        frame.pts -= origin  # the output timeline starts at the stream's first frame
        graph.vpush(frame)
        yield from drain()
    graph.vpush(None)
    yield from drain()


class _Chunk:
    """One chunk being encoded into `<start>.MP4.partial`, renamed when closed."""

    def __init__(self, folder: Path, index: int, frame: Any, config: ReencodeConfig) -> None:
        self.index = index
        self.path = folder / f"{index * config.chunk_s}.MP4"
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.container = av.open(str(self.partial), "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=config.fps)
        self.stream.width, self.stream.height = frame.width, frame.height
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.thread_type = "FRAME"  # PyAV's default is SLICE
        self.stream.codec_context.thread_count = ENCODER_THREADS  # 0 = one per core
        self.stream.options = {"crf": str(config.crf), "preset": config.preset,
                               "x264-params": "cpu-independent=1"}

    def write(self, frame: Any) -> None:
        frame.pict_type = PictureType.NONE  # else the source's I/P/B type is forced on x264
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()
        os.replace(self.partial, self.path)


def _write(
    source: Path, folder: Path, config: ReencodeConfig, present: set[int], first: int,
    stop: int | None, seek_s: float,
) -> tuple[int, int] | None:
    """Encode chunks `first..stop` not in `present`; (written, last frame) or None if the
    seek landed after chunk `first`'s start."""
    settings = _settings(config)
    per = config.fps * config.chunk_s
    written, last, current = 0, -1, None
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in _filtered(container, stream, settings, seek_s):
            if last < 0 and seek_s > 0 and frame.pts > first * per:
                return None
            last, index = frame.pts, frame.pts // per
            if stop is not None and index > stop:
                break
            if current is not None and current.index != index:
                current.close()
                written, current = written + 1, None
            if index in present or index < first:
                continue
            if current is None:
                current = _Chunk(folder, index, frame, config)
            frame.pts, frame.time_base = frame.pts - index * per, Fraction(1, config.fps)
            current.write(frame)
        if current is not None:
            current.close()
            written += 1
    return written, last


def _settings(config: ReencodeConfig) -> Settings:
    return Settings(config.short_side, config.fps, config.chunk_s, config.crf, config.preset)


def reencode_video(source: Path, folder: Path, config: ReencodeConfig) -> int:
    """Write the missing chunks of one video; returns how many were written (0: skipped)."""
    per = config.fps * config.chunk_s
    chunks = _finished(folder, _settings(config))
    present = {s // config.chunk_s for s in _present(folder) if s % config.chunk_s == 0}
    if chunks is not None and present >= set(range(chunks)):
        return 0
    first = min(set(range(len(present) + 1)) - present)
    stop = max(set(range(chunks)) - present) if chunks is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    seek_s = max(0.0, first * config.chunk_s - 2.0)
    try:
        done = _write(source, folder, config, present, first, stop, seek_s)
        if done is None:  # the keyframe found was after the chunk's start: decode it all
            done = _write(source, folder, config, present, first, stop, 0.0)
    except av.error.FFmpegError as error:
        reason = getattr(error, "strerror", None) or error
        raise VideoError(source, f"cannot re-encode ({reason}); check the file") from None
    assert done is not None
    written, last = done
    if last < 0:
        raise VideoError(source, "no frames decoded; check the file")
    if chunks is None:  # decoded to the end: the chunk count is known now
        (folder / MARKER).write_text(json.dumps(
            {"settings": asdict(_settings(config)), "chunks": last // per + 1,
             "frames": last + 1}) + "\n")
    for stale in folder.glob("*.partial"):  # left by a killed run, chunk since rewritten
        stale.unlink()
    return written


def _job(args: tuple[Path, Path, ReencodeConfig]) -> int:
    return reencode_video(*args)


def reencode(config: ReencodeConfig) -> dict[str, int]:
    """Re-encode every selected video; failures are collected and reported once at the end."""
    if min(config.short_side, config.fps, config.chunk_s, config.workers) < 1:
        raise HarnessError("--short-side, --fps, --chunk-s and --workers must be positive")
    if config.short_side % 2:
        raise HarnessError(f"--short-side {config.short_side} must be even (yuv420p)")
    videos = raw_videos(config)
    jobs = {vid: (path, chunk_folder(config.out, p, vid), config) for p, vid, path in videos}
    for _, folder, _ in jobs.values():  # other settings are refused before any work
        _finished(folder, _settings(config))
    counts = {"videos": len(jobs), "skipped": 0, "chunks": 0}
    failed: list[str] = []

    def record(vid: str, outcome: int | BaseException) -> None:
        if isinstance(outcome, HarnessError):
            failed.append(str(outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            counts["chunks"] += outcome
            counts["skipped"] += outcome == 0

    # no bar when stderr is not a terminal: logs and error lines stay clean
    with tqdm(total=len(jobs), unit="video", desc="re-encoding", disable=None) as bar:
        if config.workers == 1 or len(jobs) == 1:
            for vid, job in jobs.items():
                try:
                    record(vid, _job(job))
                except HarnessError as error:
                    record(vid, error)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs))) as pool:
                futures = {pool.submit(_job, job): vid for vid, job in jobs.items()}
                for future in as_completed(futures):
                    error = future.exception()
                    record(futures[future], error if error is not None else future.result())
                    bar.update()
    if failed:
        raise HarnessError(f"{len(failed)} of {len(jobs)} videos failed, first: {failed[0]}; "
                           "rerun the same command to retry (finished chunks are kept)")
    return counts


def main(argv: list[str] | None = None) -> None:
    config = cli(ReencodeConfig, args=argv)
    began = time.perf_counter()
    counts = reencode(config)
    print(f"{counts['videos']} videos in {config.out}: {counts['chunks']} chunks written, "
          f"{counts['skipped']} videos already complete ({time.perf_counter() - began:.1f}s)")


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
