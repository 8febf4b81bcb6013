"""Video clips for the backbones: which frames, decoded how, preprocessed as AVION evaluates.

Why: features are only comparable with AVION's numbers if every clip is sampled and
normalised the way AVION's EK100 evaluation does it, and extraction over 90 k segments of
hour-long 50/60 fps videos must seek rather than decode from the start.

Public API (stable; the extraction CLI builds on it):

- Frame selection, all in EK100's 1-based frame numbers:
  `sample_frame_ids(start, stop, num_frames=16)` is AVION's test-time rule (centre of each
  of `num_frames` equal segments of [start, stop], floored; short clips repeat frames);
  `anticipation_window(start_frame, fps, observed_s=2.0, gap_s=1.0)` is the observed
  window ending `gap_s` before the action; `select_frames(...) -> FrameSelection` applies
  the task and clamps to the video's length, logging one warning line (logger
  `extract.video`) naming the video and segment. A window outside its video is a failed
  clip, not a row of repeated edge frames: `OutsideVideoError` when more than half of it
  lies past the video's last frame (wholly past included), or all of it before frame 1.
  Smaller overruns are clamped (EK100 stop frames can overrun a video by a few frames;
  anticipation windows of actions in a video's first seconds start before frame 1).
- Decoding: `probe_video(path) -> VideoInfo`, `read_video_frames(path, ids)` (PyAV, seeks
  to the keyframe before the first wanted frame), `read_frame_folder(folder, ids)` (EK100
  `rgb_frames` JPEGs `frame_0000000001.jpg`), both returning uint8 (T, H, W, 3) RGB.
  When the container claims more frames than it holds, a few requested frames past the
  stream's real end repeat its last frame (warning); more than half of them: `VideoError`.
  A missing or unreadable video raises `VideoError` whose message starts with the path.
- `preprocess_clip(frames, size=224)`: short-side resize (bilinear, antialiased, as
  torchvision's `Resize`), centre crop, CLIP normalisation (`CLIP_MEAN`/`CLIP_STD` on
  [0, 1], i.e. AVION's mean*255/std*255 on [0, 255]) -> float32 (3, T, size, size).
- `video_path(root, participant_id, video_id, layout)`: `<root>/<P>/videos/<vid>.MP4` or
  `<root>/<P>/<vid>/` (also `<root>/<P>/rgb_frames/<vid>/`).
- `ClipDataset(segments, video_root, layout="video"|"rgb_frames",
  task="recognition"|"anticipation", num_frames=16, size=224, on_error="mark", ...)`:
  a map-style torch Dataset over a segments DataFrame (`narration_id`, `participant_id`,
  `video_id`, `start_frame`, `stop_frame`; optional `fps`). Item i is the triple
  `(clip, narration_id, error)`: clip float32 (3, T, size, size); `error` is `""` on
  success. With `on_error="mark"` (default, safe in DataLoader workers) a failed clip
  comes back as zeros with `error` = the `VideoError` message, so the caller writes a
  failure report and goes on; with `on_error="raise"` the `VideoError` propagates.
  The default collate gives `(B, 3, T, S, S)`, a list of ids and a list of errors.
  `dataset.manifest()` describes sampling and preprocessing for the store's manifest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from features.errors import HarnessError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TASKS = ("recognition", "anticipation")
LAYOUTS = ("video", "rgb_frames")
FRAME_TEMPLATE = "frame_{:010d}.jpg"


class OutsideVideoError(HarnessError, ValueError):
    """A segment whose frame window lies (mostly) outside its video: a failure, not a row."""


class VideoError(HarnessError, RuntimeError):
    """A missing, unreadable or corrupt video; the message starts with the file's path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# ------------------------------------------------------------------------- frame selection


def sample_frame_ids(start_frame: int, stop_frame: int, num_frames: int = 16) -> list[int]:
    """AVION's test-time sampling: the floored centres of `num_frames` equal segments.

    Same arithmetic as AVION's `get_frame_ids(..., jitter=False)` (midpoints of
    `linspace(start, stop, n + 1)`, cast to int); a segment shorter than `num_frames`
    frames repeats frames.
    """
    if stop_frame < start_frame:
        raise ValueError(f"stop_frame {stop_frame} is before start_frame {start_frame}")
    edges = np.linspace(start_frame, stop_frame, num_frames + 1)
    return np.convolve(edges, [0.5, 0.5], mode="valid").astype(int).tolist()


def anticipation_window(
    start_frame: int, fps: float, observed_s: float = 2.0, gap_s: float = 1.0
) -> tuple[int, int]:
    """The observed (first, last) frames: `observed_s` seconds ending `gap_s` before the action.

    At 30 fps and the defaults: (start - 90, start - 30), 60 frames; at EK100's 50/60 fps
    the same 2 s. May reach before frame 1; `select_frames` clamps.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    last = start_frame - round(gap_s * fps)
    return last - round(observed_s * fps), last


@dataclass(frozen=True)
class FrameSelection:
    """The frames of one clip: 1-based ids, the window they came from, and any clamping."""

    ids: tuple[int, ...]
    first: int
    last: int
    clamped: bool = False


def select_frames(
    start_frame: int,
    stop_frame: int,
    *,
    task: str = "recognition",
    num_frames: int = 16,
    fps: float | None = None,
    total_frames: int | None = None,
    observed_s: float = 2.0,
    gap_s: float = 1.0,
    name: str = "",
) -> FrameSelection:
    """Frame ids of one segment for `task`, clamped to [1, total_frames] with a warning.

    `OutsideVideoError` when more than half of the window lies past the last frame or all
    of it before frame 1: clamping would make a clip of one repeated edge frame.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "anticipation":
        if fps is None:
            raise ValueError("anticipation needs the video's fps")
        first, last = anticipation_window(start_frame, fps, observed_s, gap_s)
    else:
        first, last = int(start_frame), int(stop_frame)
    where = f"{name or 'video'} [{task} {start_frame}-{stop_frame}]"
    length = last - first + 1
    past = max(0, last - max(total_frames, first - 1)) if total_frames is not None else 0
    if 2 * past > length:
        raise OutsideVideoError(
            f"{where}: {past} of the {length} frames {first}-{last} lie past the video's last "
            f"frame {total_frames}; check the segment's frames and video (wrong video or fps?)"
        )
    if last < 1:
        raise OutsideVideoError(f"{where}: frames {first}-{last} all lie before the video's "
                                "first frame; nothing of the window was filmed")
    reasons = []
    if first < 1:
        reasons.append(f"window starts at frame {first}, before the video")
    if total_frames is not None and last > total_frames:
        reasons.append(f"stop frame {last} is past the last frame {total_frames}")
    hi = total_frames if total_frames is not None else max(last, 1)
    first, last = min(max(first, 1), hi), min(max(last, 1), hi)
    if reasons:
        log.warning(
            "%s [%s %d-%d]: %s; clamped to frames %d-%d",
            name or "video",
            task,
            start_frame,
            stop_frame,
            "; ".join(reasons),
            first,
            last,
        )
    ids = sample_frame_ids(first, last, num_frames)
    return FrameSelection(tuple(ids), first, last, bool(reasons))


# -------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder needs to know about a video file."""

    path: str
    fps: float
    num_frames: int
    width: int
    height: int


def _open(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "video file not found")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise VideoError(path, f"cannot open video ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream in file")
    return container


def _fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ValueError("unknown frame rate")
    return float(rate)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, frame count and size from the container metadata (no decoding)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            fps = _fps(stream)
        except ValueError as error:
            raise VideoError(path, str(error)) from error
        count = int(stream.frames or 0)
        if count <= 0:  # containers without a frame count: estimate from the duration
            if stream.duration is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
            count = int(round(seconds * fps))
        if count <= 0:
            raise VideoError(path, "cannot determine the number of frames")
        ctx = stream.codec_context
        return VideoInfo(str(path), fps, count, int(ctx.width), int(ctx.height))


def read_video_frames(
    path: str | os.PathLike,
    frame_ids: Sequence[int],
    threads: int = 0,
    seek_gap_s: float = 1.0,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """Decode the 1-based `frame_ids` (any order, repeats allowed) as uint8 (T, H, W, 3) RGB.

    Wanted frames are grouped into runs whose gaps are at most `seek_gap_s` seconds; each
    run starts with a seek to the keyframe at or before it and decodes forward, numbering
    frames by their timestamps. So a segment deep in an hour-long video costs one GOP plus
    the segment, and a long segment costs about one GOP per sampled frame. Only wanted
    frames are converted to RGB. Frames past the real end of the stream repeat the last
    one (with a warning). `threads` sets FFmpeg's decoder threads (0: FFmpeg's choice; 1
    suits many DataLoader workers). `stats`, if given, receives `decoded` and `seeks`.
    """
    if not len(frame_ids):
        raise ValueError("no frame ids")
    wanted = sorted(set(int(i) for i in frame_ids))
    if wanted[0] < 1:
        raise ValueError(f"frame ids are 1-based, got {wanted[0]}")
    counts = {"decoded": 0, "seeks": 0}
    frames = _decode(path, wanted, threads, seek_gap_s, counts)
    if stats is not None:
        stats.update(counts)
    if not frames:
        raise VideoError(path, f"no frames decoded for ids {wanted[0]}-{wanted[-1]}")
    last = max(frames)
    absent = [i for i in wanted if i not in frames]
    if any(i < last for i in absent):
        raise VideoError(path, f"frames {[i for i in absent if i < last]} missing from the stream")
    past = sum(int(i) > last for i in frame_ids)
    if 2 * past > len(frame_ids):
        raise VideoError(path, f"{past} of {len(frame_ids)} requested frames lie past the "
                               f"stream's last frame {last} (the container claims more frames)")
    if absent:
        log.warning(
            "%s: frames %d-%d are past the stream's last frame %d; repeating it",
            path,
            absent[0],
            absent[-1],
            last,
        )
    return np.stack([frames[min(int(i), last)] for i in frame_ids])


def _runs(wanted: list[int], gap: int) -> list[list[int]]:
    runs = [[wanted[0]]]
    for i in wanted[1:]:
        if i - runs[-1][-1] > gap:
            runs.append([i])
        else:
            runs[-1].append(i)
    return runs


def _decode(
    path: str | os.PathLike,
    wanted: list[int],
    threads: int,
    seek_gap_s: float,
    counts: dict[str, int],
) -> dict[int, np.ndarray]:
    """{1-based id: RGB array} for the `wanted` ids (sorted, unique) found in the stream."""
    frames: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = container.streams.video[0]
        if threads:
            stream.codec_context.thread_count = threads
        try:
            fps = _fps(stream)
            tb = float(stream.time_base)
            origin = stream.start_time or 0
            gap = max(1, int(round(seek_gap_s * fps)))

            def number(frame: Any) -> int:
                return int(round((frame.pts - origin) * tb * fps)) + 1

            def seek(frame_id: int) -> None:
                target = origin + int((frame_id - 1) / fps / tb)
                container.seek(max(target, origin), stream=stream, backward=True, any_frame=False)
                counts["seeks"] += 1

            def decode_run(run: list[int], check_overshoot: bool) -> bool:
                """Decode forward through `run`; False if the seek landed after its start."""
                todo = set(run)
                for frame in container.decode(stream):
                    if frame.pts is None:
                        continue
                    index = number(frame)
                    counts["decoded"] += 1
                    if check_overshoot:
                        if index > run[0]:
                            return False
                        check_overshoot = False
                    if index in todo:
                        frames[index] = frame.to_ndarray(format="rgb24")
                    if index >= run[-1]:
                        break
                return True

            for k, run in enumerate(_runs(wanted, gap)):
                if k == 0 and run[0] <= gap:  # near the start: just decode from the start
                    decode_run(run, check_overshoot=False)
                    continue
                # back off when the keyframe found for a target decodes to a later frame
                # (B-frame reordering near a keyframe); frame 1 is always safe
                for target in (run[0], run[0] - gap, run[0] - 4 * gap, 1):
                    if target < 1 and target != 1:
                        continue
                    seek(max(target, 1))
                    if decode_run(run, check_overshoot=target > 1):
                        break
        except (av.error.FFmpegError, ValueError) as error:
            raise VideoError(path, f"corrupt or unreadable video ({error})") from error
    return frames


def count_frame_files(folder: str | os.PathLike) -> int:
    """Number of `frame_*.jpg` files in an `rgb_frames` folder (1..N are assumed present)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(folder, "frame folder not found")
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.startswith("frame_") and e.name.endswith(".jpg"))


def read_frame_folder(
    folder: str | os.PathLike, frame_ids: Sequence[int], template: str = FRAME_TEMPLATE
) -> np.ndarray:
    """Load 1-based `frame_ids` from an `rgb_frames` folder as uint8 (T, H, W, 3) RGB."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(folder, "frame folder not found")
    cache: dict[int, np.ndarray] = {}
    for i in set(frame_ids):
        path = folder / template.format(int(i))
        try:
            with Image.open(path) as image:
                cache[i] = np.asarray(image.convert("RGB"))
        except FileNotFoundError as error:
            raise VideoError(path, "frame file not found") from error
        except OSError as error:
            raise VideoError(path, f"unreadable frame ({error})") from error
    return np.stack([cache[i] for i in frame_ids])


# --------------------------------------------------------------------------- preprocessing


def preprocess_clip(
    frames: np.ndarray | torch.Tensor,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """uint8 (T, H, W, 3) RGB -> normalised float32 (3, T, size, size), as AVION evaluates.

    Short side to `size` (long side `int(size * long / short)`, bilinear with antialias,
    like torchvision's `Resize(size)`), centre crop `size` (torchvision's rounding), then
    `(x - 255 * mean) / (255 * std)` on [0, 255] values. uint8 frames are resized in uint8
    on channels-last memory (PyTorch's fast path, ~50x faster than float on 1080p; values
    within one grey level of the float resize), so decoding full-HD EK100 stays cheap.
    """
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W) channels-last
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    if short != size:
        new_long = int(size * long / short)
        new_hw = (size, new_long) if h <= w else (new_long, size)
        x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    x = x[..., top : top + size, left : left + size].float()
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).permute(1, 0, 2, 3).contiguous()


# --------------------------------------------------------------------------------- dataset


def video_path(
    root: str | os.PathLike, participant_id: str, video_id: str, layout: str = "video"
) -> Path:
    """Where EK100 keeps a video (`.MP4`, or `.mp4` if only that exists) or its JPEG folder."""
    root = Path(root)
    if layout == "video":
        path = root / participant_id / "videos" / f"{video_id}.MP4"
        lower = path.with_suffix(".mp4")
        return lower if not path.exists() and lower.exists() else path
    if layout == "rgb_frames":
        path = root / participant_id / video_id
        nested = root / participant_id / "rgb_frames" / video_id
        return nested if not path.exists() and nested.exists() else path
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


class ClipDataset(Dataset):
    """Decoded, preprocessed clips of EK100 segments; items are (clip, narration_id, error)."""

    REQUIRED = ("narration_id", "participant_id", "video_id", "start_frame", "stop_frame")

    def __init__(
        self,
        segments: Any,
        video_root: str | os.PathLike,
        layout: str = "video",
        task: str = "recognition",
        num_frames: int = 16,
        size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        fps: float | None = None,
        observed_s: float = 2.0,
        gap_s: float = 1.0,
        on_error: str = "mark",
        frame_template: str = FRAME_TEMPLATE,
        threads: int = 1,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if on_error not in ("mark", "raise"):
            raise ValueError(f"on_error must be 'mark' or 'raise', got {on_error!r}")
        missing = [c for c in self.REQUIRED if c not in segments.columns]
        if missing:
            raise ValueError(f"segments lack columns {missing}")
        has_fps = "fps" in segments.columns
        if task == "anticipation" and layout == "rgb_frames" and fps is None and not has_fps:
            raise ValueError("anticipation from rgb_frames needs fps= or an 'fps' column")
        self.rows = [
            (
                str(r.narration_id),
                str(r.participant_id),
                str(r.video_id),
                int(r.start_frame),
                int(r.stop_frame),
                float(r.fps) if has_fps else None,
            )
            for r in segments.itertuples(index=False)
        ]
        self.video_root = Path(video_root)
        self.layout, self.task = layout, task
        self.num_frames, self.size = num_frames, size
        self.mean, self.std = tuple(mean), tuple(std)
        self.fps, self.observed_s, self.gap_s = fps, observed_s, gap_s
        self.on_error, self.frame_template, self.threads = on_error, frame_template, threads
        self._lengths: dict[str, tuple[float | None, int]] = {}  # per worker process

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (3, self.num_frames, self.size, self.size)

    def manifest(self) -> dict[str, Any]:
        """How clips are made, for the feature store's manifest."""
        info: dict[str, Any] = {
            "task": self.task,
            "layout": self.layout,
            "num_frames": self.num_frames,
            "sampling": "AVION test-time: floored centres of num_frames equal segments",
            "resize": f"short side {self.size}, bilinear antialias",
            "crop": f"centre {self.size}x{self.size}",
            "normalisation": {"mean": list(self.mean), "std": list(self.std), "scale": "[0,1]"},
            "frame_numbers": "EK100 1-based, clamped to the video; a window mostly past its "
            "end or wholly before its start is a failed clip",
        }
        if self.task == "anticipation":
            info.update(observed_s=self.observed_s, gap_s=self.gap_s)
        return info

    def source(self, index: int) -> Path:
        """The video file or frame folder of item `index`."""
        _, participant, video, *_ = self.rows[index]
        return video_path(self.video_root, participant, video, self.layout)

    def _length(self, path: Path) -> tuple[float | None, int]:
        key = str(path)
        if key not in self._lengths:
            if self.layout == "video":
                info = probe_video(path)
                self._lengths[key] = (info.fps, info.num_frames)
            else:
                self._lengths[key] = (None, count_frame_files(path))
        return self._lengths[key]

    def frames(self, index: int) -> FrameSelection:
        """The frame selection of item `index` (probes the video for fps and length)."""
        narration_id, _, video, start, stop, row_fps = self.rows[index]
        video_fps, total = self._length(self.source(index))
        fps = row_fps or self.fps or video_fps
        try:
            return select_frames(
                start,
                stop,
                task=self.task,
                num_frames=self.num_frames,
                fps=fps,
                total_frames=total,
                observed_s=self.observed_s,
                gap_s=self.gap_s,
                name=f"{video} {narration_id}",
            )
        except OutsideVideoError as error:  # a failed clip (zeros + error), never a row
            raise VideoError(self.source(index), str(error)) from None

    def load(self, index: int) -> torch.Tensor:
        """The preprocessed clip of item `index`; raises `VideoError`."""
        path = self.source(index)
        ids = self.frames(index).ids
        if self.layout == "video":
            raw = read_video_frames(path, ids, threads=self.threads)
        else:
            raw = read_frame_folder(path, ids, self.frame_template)
        return preprocess_clip(raw, self.size, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        narration_id = self.rows[index][0]
        try:
            return self.load(index), narration_id, ""
        except VideoError as error:
            if self.on_error == "raise":
                raise
            return torch.zeros(self.clip_shape), narration_id, str(error)
