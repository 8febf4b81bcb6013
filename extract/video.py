"""Video clips for the backbones: which frames, decoded how, preprocessed the way AVION does.

Why: features are only comparable with AVION's numbers if every clip is sampled, cropped
and normalised the way AVION's EK100 evaluation does it, and extraction over 90 k segments
of hour-long 50/60 fps videos must seek rather than decode from the start.

Every choice is a field of a `Preprocess` (frozen); `PRESETS` names two of them:

- `avion` (default for the vitb/vitl backbones), checked against AVION at commit
  31b00b6bc5d2c09f56b90643cd546cfe8a31c005 (github.com/zhaoyue-zephyrus/AVION):
  mean/std on 0-255 RGB `AVION_MEAN`/`AVION_STD` (`scripts/main_lavila_finetune_cls.py`,
  `--norm-style openai`); `timeline="avion-30fps"`: frame ids from the segment's
  timestamps on a 30 fps timeline (`avion_frame_ids`, the rule of
  `avion/data/clip_dataset.py::video_loader` + `get_frame_ids(..., jitter=False)`);
  `resize="fused"`: FFmpeg `crop=S:S:(W-S)/2:(H-S)/2,scale=224:224` on each decoded frame,
  the filter AVION's decord fork builds for `fast_rcc` (`--fused-decode-crop`, used by every
  command of AVION's docs/MODEL_ZOO.md; decord-dev d19ab82,
  `src/video/ffmpeg/threaded_decoder.cc`), run here through PyAV's libavfilter, so it *is*
  FFmpeg's filter; `precision="fp16"` (AVION validates under `torch.cuda.amp.autocast()`).
  `scaler`: decord passes no swscale flags, so the scale filter's default applies: `bilinear`
  in FFmpeg 4.4's `vf_scale.c` (the FFmpeg of Ubuntu 22.04, the system AVION's
  docs/INSTALL.md names), swscale's `bicubic` in later FFmpeg. Which FFmpeg AVION's decord
  was linked against is not verified; `bilinear` is the default, `bicubic` an option.
- `ours-v1` (stores made before issue 14): CLIP's mean/std, the `native` timeline (EK100's
  1-based start/stop frames at the video's own fps), `resize="antialias"` (uint8 bilinear
  short-side resize with antialias, centre crop), bf16.
  `resize="torchvision"` is AVION's non-fused path: float `Resize(224)` (bilinear, no
  antialias: torchvision 0.14 on tensors) then `CenterCrop(224)`.

Public API (stable; the extraction CLI builds on it):

- Frame selection: `sample_frame_ids(start, stop, num_frames=16)` (AVION's `get_frame_ids`
  without jitter: floored centres of equal segments); `avion_frame_ids(start_s, stop_s,
  num_frames, frames_30)` (0-based ids on the 30 fps timeline, end clamped to the video's
  last frame); `native_for_30fps(ids, fps)` maps them to a native-fps video's 0-based frames
  (see there); `anticipation_window(...)`, `select_frames(...) -> FrameSelection` for the
  native timeline. A window outside its video is a failed clip (`OutsideVideoError`) when
  more than half of it lies past the video's end, or all of it before its start; smaller
  overruns are clamped with one warning line (logger `extract.video`).
- Decoding: `probe_video(path) -> VideoInfo`, `read_video_frames(path, ids, convert=None)`
  (PyAV, seeks to the keyframe before the first wanted frame; `convert` turns each wanted
  `av.VideoFrame` into an array, default rgb24), `read_frame_folder(folder, ids)` (EK100
  `rgb_frames` JPEGs `frame_0000000001.jpg`); ids are 1-based, arrays uint8 (T, H, W, 3).
  A missing or unreadable video raises `VideoError` whose message starts with the path.
- `preprocess_clip(frames, size, mean, std)` (the `antialias` path, CLIP mean/std on [0, 1]),
  `torchvision_clip(frames, size, mean255, std255)` (the non-fused AVION path),
  `FusedCropScale(size, scaler)` (the fused FFmpeg filter, frame by frame), `normalise`.
- `video_path(root, participant_id, video_id, layout)`.
- `ClipDataset(segments, video_root, layout, task, num_frames, size, preprocess=PRESETS[
  "ours-v1"], fps=None, ...)`: items `(clip, narration_id, error)`, clip float32
  (3, T, size, size); a failed clip is zeros plus its error (`on_error="mark"`).
  `dataset.clip_plan(i)` gives the frames a clip reads without decoding them (the `extract
  clips` dry run); `dataset.manifest()` names every choice for the store's manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from features.errors import HarnessError

if TYPE_CHECKING:  # extract.avion_layout imports this module
    from extract.avion_layout import ChunkedVideo

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TASKS = ("recognition", "anticipation")
LAYOUTS = ("video", "rgb_frames", "avion-chunks")
FRAME_TEMPLATE = "frame_{:010d}.jpg"
# AVION's `--norm-style openai` mean/std on 0-255 RGB (scripts/main_lavila_finetune_cls.py,
# AVION 31b00b6). They are not CLIP's mean*255 (CLIP's red mean is 122.77).
AVION_MEAN = (108.3272985, 116.7460125, 104.09373615)
AVION_STD = (68.5005327, 66.6321579, 70.32316305)
AVION_FPS = 30  # AVION reads 30 fps re-encodes; its frame ids live on this timeline
TIMELINES = ("avion-30fps", "native")
RESIZES = ("fused", "torchvision", "antialias")
SCALERS = ("bilinear", "bicubic")
PRECISIONS = ("fp16", "bf16")


@dataclass(frozen=True)
class Preprocess:
    """How a clip is made from a video: every choice that changes the backbone's input.

    `mean`/`std` are on the 0-255 scale. `timeline`: `avion-30fps` (frame ids from the
    segment's timestamps on a 30 fps timeline, AVION's rule) or `native` (EK100's 1-based
    start/stop frames at the video's own fps). `resize`: `fused` (FFmpeg crop of the central
    S x S square, S = short side, then `scale` to size x size with `scaler`), `torchvision`
    (float bilinear short-side resize without antialias, then centre crop: AVION's
    non-fused path) or `antialias` (our pre-issue-14 uint8 antialiased resize).
    `precision`: the CUDA autocast dtype (`fp16` as AVION evaluates, or `bf16`).
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    timeline: str
    resize: str
    scaler: str = "bilinear"
    precision: str = "fp16"

    def __post_init__(self) -> None:
        for field, value, choices in (
            ("timeline", self.timeline, TIMELINES),
            ("resize", self.resize, RESIZES),
            ("scaler", self.scaler, SCALERS),
            ("precision", self.precision, PRECISIONS),
        ):
            if value not in choices:
                raise ValueError(f"{field} must be one of {choices}, got {value!r}")

    @property
    def fps(self) -> float | None:
        """Frame rate of the timeline (None: each video's own)."""
        return float(AVION_FPS) if self.timeline == "avion-30fps" else None

    def to_dict(self) -> dict[str, Any]:
        info = dataclasses.asdict(self)
        info.update(mean=list(self.mean), std=list(self.std), scale="0-255",
                    timeline_fps=self.fps)
        if self.resize != "fused":
            info.pop("scaler")  # only the FFmpeg filter uses it
        return info


PRESETS = {
    "avion": Preprocess("avion", AVION_MEAN, AVION_STD, "avion-30fps", "fused"),
    "ours-v1": Preprocess(
        "ours-v1",
        tuple(255.0 * m for m in CLIP_MEAN),  # type: ignore[arg-type]
        tuple(255.0 * s for s in CLIP_STD),  # type: ignore[arg-type]
        "native",
        "antialias",
        precision="bf16",
    ),
}


def preprocess_preset(name: str, **overrides: Any) -> Preprocess:
    """The named preset with fields replaced (None values are ignored); a changed preset is
    renamed `<name>+<field>=<value>...` so a manifest never claims an exact preset it is not."""
    if name not in PRESETS:
        raise ValueError(f"unknown preprocessing {name!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[name]
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(base, k) != v}
    if not changed:
        return base
    label = name + "".join(f"+{k}={v}" for k, v in sorted(changed.items()))
    return dataclasses.replace(base, name=label, **changed)


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


# ---------------------------------------------------------------- AVION's 30 fps timeline


def timestamp_seconds(value: str | float) -> float:
    """EK100's `HH:MM:SS.ff` as seconds, as AVION's `datetime2sec` reads it."""
    if isinstance(value, int | float):
        return float(value)
    try:
        hh, mm, ss = str(value).split(":")
        return int(hh) * 3600 + int(mm) * 60 + float(ss)
    except ValueError:
        raise ValueError(f"timestamp {value!r} is not HH:MM:SS.ff") from None


def avion_frame_ids(
    start_s: float,
    stop_s: float,
    num_frames: int = 16,
    frames_30: int | None = None,
    name: str = "",
) -> FrameSelection:
    """0-based frame ids on AVION's 30 fps timeline for a segment's timestamps.

    AVION's `video_loader` (chunked layout, avion/data/clip_dataset.py at 31b00b6) clamps the
    end to the video's last frame, `min(stop_s, (frames_30 - 1) / 30)`, then takes
    `get_frame_ids(round(start_s * 30), round(stop_s * 30), num_frames, jitter=False)`
    (`np.round`: half to even). `frames_30` is the number of frames on that timeline
    (None: no clamp). As on the native timeline, a window more than half past the video's
    end (or wholly before it) is `OutsideVideoError`; the clamp is logged.
    """
    fps = AVION_FPS
    first = int(np.round(start_s * fps))
    wanted = int(np.round(stop_s * fps))
    last = wanted
    where = f"{name or 'video'} [{start_s:.3f}-{stop_s:.3f} s]"
    if frames_30 is not None:
        length = max(wanted - first + 1, 1)
        past = max(0, wanted - max(frames_30 - 1, first - 1))
        if 2 * past > length:
            raise OutsideVideoError(
                f"{where}: {past} of the {length} frames {first}-{wanted} (30 fps) lie past the "
                f"video's last frame {frames_30 - 1}; check the segment's times and video"
            )
        last = int(np.round(min(stop_s, (frames_30 - 1) / fps) * fps))
    if last < 0:
        raise OutsideVideoError(f"{where}: the window lies before the video's first frame")
    if last != wanted:
        log.warning("%s: stop frame %d is past the last frame %d (30 fps); clamped",
                    where, wanted, last)
    first = max(first, 0)
    return FrameSelection(tuple(sample_frame_ids(first, max(first, last), num_frames)),
                          first, max(first, last), last != wanted)


def _rate(fps: float | Fraction) -> Fraction:
    return fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)


def frames_on_30fps(num_frames: int, fps: float | Fraction) -> int:
    """Frames a 30 fps copy of a `num_frames`-frame video at `fps` has (its duration x 30,
    rounded half up)."""
    return max(1, math.floor(num_frames * AVION_FPS / _rate(fps) + Fraction(1, 2)))


def native_for_30fps(ids_30: Sequence[int], fps: float | Fraction) -> list[int]:
    """0-based native frames standing for 0-based frames of a 30 fps timeline.

    Frame k of the 30 fps timeline is the frame FFmpeg's `fps` filter (default `round=near`)
    would put there when re-encoding to 30 fps: the last native frame j whose time, rounded
    to the 30 fps grid, is at most k, i.e. the last one that starts before (k + 1/2) / 30 s.
    So reading a raw 50/60 fps video picks the frames a 30 fps re-encode holds (the identity
    at 30 fps). Not `nearest`: at 50 fps, k = 2 (0.0667 s) maps to j = 4 (0.08 s), not 3.
    """
    rate = _rate(fps)
    return [max(0, math.ceil((2 * int(k) + 1) * rate / (2 * AVION_FPS)) - 1) for k in ids_30]


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
    convert: Callable[[Any], np.ndarray] | None = None,
) -> np.ndarray:
    """Decode the 1-based `frame_ids` (any order, repeats allowed) as uint8 (T, H, W, 3) RGB.

    Wanted frames are grouped into runs whose gaps are at most `seek_gap_s` seconds; each
    run starts with a seek to the keyframe at or before it and decodes forward, numbering
    frames by their timestamps. So a segment deep in an hour-long video costs one GOP plus
    the segment, and a long segment costs about one GOP per sampled frame. Only wanted
    frames are converted to RGB. Frames past the real end of the stream repeat the last
    one (with a warning). `threads` sets FFmpeg's decoder threads (0: FFmpeg's choice; 1
    suits many DataLoader workers). `stats`, if given, receives `decoded` and `seeks`.
    `convert(av.VideoFrame) -> array` replaces the rgb24 conversion of wanted frames (the
    fused FFmpeg crop-scale works on the decoded YUV frame, as AVION's decord does).
    """
    if not len(frame_ids):
        raise ValueError("no frame ids")
    wanted = sorted(set(int(i) for i in frame_ids))
    if wanted[0] < 1:
        raise ValueError(f"frame ids are 1-based, got {wanted[0]}")
    counts = {"decoded": 0, "seeks": 0}
    frames = _decode(path, wanted, threads, seek_gap_s, counts, convert or _rgb24)
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


def _rgb24(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


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
    convert: Callable[[Any], np.ndarray],
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
                        frames[index] = convert(frame)
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


def resize_center_crop(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """(..., H, W) -> (..., size, size) as torchvision's `Resize(size)` + `CenterCrop(size)`:
    short side to `size` (long side `int(size * long / short)`), bilinear, then the centre
    square with offsets `int(round((h - size) / 2))`."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    if short != size:
        new_long = int(size * long / short)
        new_hw = (size, new_long) if h <= w else (new_long, size)
        x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False,
                          antialias=antialias)
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


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
    x = resize_center_crop(x, size, antialias=True).float()
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((x - m) / s).permute(1, 0, 2, 3).contiguous()


def normalise(x: torch.Tensor, mean255: Sequence[float], std255: Sequence[float]) -> torch.Tensor:
    """(T, 3, H, W) values on 0-255 -> normalised float32 (3, T, H, W)."""
    m = torch.tensor(mean255, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std255, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.float() - m) / s).permute(1, 0, 2, 3).contiguous()


def torchvision_clip(
    frames: np.ndarray | torch.Tensor,
    size: int,
    mean255: Sequence[float] = AVION_MEAN,
    std255: Sequence[float] = AVION_STD,
) -> torch.Tensor:
    """AVION's non-fused validation transform: uint8 (T, H, W, 3) -> float32 (3, T, size, size).

    AVION (scripts/main_lavila_finetune_cls.py at 31b00b6) casts frames to float32, then
    `Resize(224)`, `CenterCrop(224)`, `NormalizeVideo(mean, std)`. torchvision 0.14 (AVION's
    docs/INSTALL.md pins 0.14.1) resizes tensors bilinearly with `antialias=None`, i.e. off,
    short side to `size`, long side `int(size * long / short)`; the crop offset is
    `int(round((h - size) / 2))`.
    """
    # AVION's layout: float32 (T, H, W, C) permuted to (C, T, H, W), read by F.interpolate as
    # C images of T channels; made contiguous, since PyTorch 2's kernel for the permuted
    # strides rounds differently (up to 1.3e-5 after normalisation where a weight is 1/2)
    x = torch.as_tensor(np.asarray(frames)).float().permute(3, 0, 1, 2).contiguous()
    x = resize_center_crop(x, size, antialias=False)
    m = torch.tensor(mean255, dtype=torch.float32).view(3, 1, 1, 1)
    s = torch.tensor(std255, dtype=torch.float32).view(3, 1, 1, 1)
    return ((x - m) / s).contiguous()


class FusedCropScale:
    """AVION's fused decode-crop on one frame: FFmpeg `crop=S:S:(W-S)/2:(H-S)/2,scale=N:N`.

    The filter string decord-dev (d19ab82, src/video/ffmpeg/threaded_decoder.cc, `use_rcc`)
    builds, run by libavfilter through PyAV on each decoded frame (YUV for videos, rgb24 for
    JPEG frames) and delivered as rgb24, as decord's buffersink does. `scaler` is the swscale
    algorithm (see the module docstring). Call with an `av.VideoFrame` or a uint8 (H, W, 3)
    array; returns uint8 (size, size, 3). One graph per input size and format.
    """

    def __init__(self, size: int, scaler: str = "bilinear") -> None:
        if scaler not in SCALERS:
            raise ValueError(f"scaler must be one of {SCALERS}, got {scaler!r}")
        self.size, self.scaler = size, scaler
        self._graphs: dict[tuple[int, int, str], Any] = {}

    def filter(self, width: int, height: int) -> str:
        """The FFmpeg filter chain for a width x height input."""
        side = min(width, height)
        return (f"crop={side}:{side}:{(width - side) // 2}:{(height - side) // 2},"
                f"scale={self.size}:{self.size}:flags={self.scaler}")

    def _graph(self, width: int, height: int, fmt: str) -> Any:
        key = (width, height, fmt)
        if key not in self._graphs:
            graph = av.filter.Graph()
            crop, scale = self.filter(width, height).split(",")
            chain = [
                graph.add_buffer(width=width, height=height, format=fmt,
                                 time_base=Fraction(1, AVION_FPS)),
                graph.add("crop", crop.removeprefix("crop=")),
                graph.add("scale", scale.removeprefix("scale=")),
                graph.add("format", "rgb24"),
                graph.add("buffersink"),
            ]
            for a, b in zip(chain, chain[1:], strict=False):
                a.link_to(b)
            graph.configure()
            self._graphs[key] = graph
        return self._graphs[key]

    def __call__(self, frame: Any) -> np.ndarray:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        graph = self._graph(frame.width, frame.height, frame.format.name)
        frame.pts = self._pts = getattr(self, "_pts", -1) + 1
        graph.push(frame)
        return graph.pull().to_ndarray(format="rgb24")


# --------------------------------------------------------------------------------- dataset


def video_path(
    root: str | os.PathLike, participant_id: str, video_id: str, layout: str = "video"
) -> Path:
    """Where EK100 keeps a video (`.MP4`, or `.mp4` if only that exists) or its JPEG folder."""
    root = Path(root)
    if layout == "avion-chunks":  # AVION's copy: a folder of 15 s chunks (extract.avion_layout)
        return root / participant_id / f"{video_id}.MP4"
    if layout == "video":
        path = root / participant_id / "videos" / f"{video_id}.MP4"
        lower = path.with_suffix(".mp4")
        return lower if not path.exists() and lower.exists() else path
    if layout == "rgb_frames":
        path = root / participant_id / video_id
        nested = root / participant_id / "rgb_frames" / video_id
        return nested if not path.exists() and nested.exists() else path
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


@dataclass(frozen=True)
class ClipPlan:
    """What one clip reads, before decoding: the `extract clips` dry run prints it.

    `frame_ids` are 0-based on the timeline (`fps`: 30 for AVION's, else the video's);
    `source_ids` are the 1-based frames read from `sources` (file names of a frame folder).
    """

    narration_id: str
    sources: tuple[str, ...]
    fps: float | None
    frame_ids: tuple[int, ...]
    source_ids: tuple[int, ...]
    clamped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "narration_id": self.narration_id,
            "sources": list(self.sources),
            "fps": self.fps,
            "frame_ids": list(self.frame_ids),
            "source_frame_ids": list(self.source_ids),
            "clamped": self.clamped,
        }


class ClipDataset(Dataset):
    """Decoded, preprocessed clips of EK100 segments; items are (clip, narration_id, error).

    `preprocess` (default `PRESETS["ours-v1"]`, the pre-issue-14 behaviour; the CLI picks
    `avion` for vitb/vitl) decides timeline, resize and normalisation. The `avion-30fps`
    timeline reads `start_timestamp`/`stop_timestamp`; `rgb_frames` folders then need their
    native fps (`fps=` or an `fps` column).
    """

    REQUIRED = ("narration_id", "participant_id", "video_id", "start_frame", "stop_frame")

    def __init__(
        self,
        segments: Any,
        video_root: str | os.PathLike,
        layout: str = "video",
        task: str = "recognition",
        num_frames: int = 16,
        size: int = 224,
        preprocess: Preprocess | None = None,
        fps: float | None = None,
        observed_s: float = 2.0,
        gap_s: float = 1.0,
        on_error: str = "mark",
        frame_template: str = FRAME_TEMPLATE,
        threads: int = 1,
    ) -> None:
        preprocess = preprocess or PRESETS["ours-v1"]
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if on_error not in ("mark", "raise"):
            raise ValueError(f"on_error must be 'mark' or 'raise', got {on_error!r}")
        avion = preprocess.timeline == "avion-30fps"
        if layout == "avion-chunks" and not avion:
            raise ValueError("AVION's chunked layout holds 30 fps re-encodes: it needs the "
                             "avion-30fps timeline")
        required = self.REQUIRED + (("start_timestamp", "stop_timestamp") if avion else ())
        missing = [c for c in required if c not in segments.columns]
        if missing:
            raise ValueError(f"segments lack columns {missing}")
        has_fps = "fps" in segments.columns
        needs_fps = task == "anticipation" or avion
        if needs_fps and layout == "rgb_frames" and fps is None and not has_fps:
            raise ValueError(f"{task} on the {preprocess.timeline} timeline from rgb_frames "
                             "needs the frames' native fps (fps= or an 'fps' column)")
        self.rows = [
            (
                str(r.narration_id),
                str(r.participant_id),
                str(r.video_id),
                int(r.start_frame),
                int(r.stop_frame),
                float(r.fps) if has_fps else None,
                timestamp_seconds(r.start_timestamp) if avion else None,
                timestamp_seconds(r.stop_timestamp) if avion else None,
            )
            for r in segments.itertuples(index=False)
        ]
        self.video_root = Path(video_root)
        self.layout, self.task = layout, task
        self.num_frames, self.size = num_frames, size
        self.preprocess = preprocess
        self.fps, self.observed_s, self.gap_s = fps, observed_s, gap_s
        self.on_error, self.frame_template, self.threads = on_error, frame_template, threads
        self._lengths: dict[str, tuple[float | Fraction | None, int]] = {}  # per worker process
        self._chunked: dict[tuple[str, str], ChunkedVideo] = {}  # per worker: _chunked_video
        self._fused: FusedCropScale | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        return (3, self.num_frames, self.size, self.size)

    def manifest(self) -> dict[str, Any]:
        """How clips are made, for the feature store's manifest: every choice, named."""
        p = self.preprocess
        if p.timeline == "avion-30fps":
            sampling = ("AVION: ids on a 30 fps timeline from the timestamps, get_frame_ids("
                        "round(start_s*30), round(min(stop_s, last)*30), num_frames, "
                        "jitter=False); native videos: the frame FFmpeg's fps filter keeps")
        else:
            sampling = "floored centres of num_frames equal segments of EK100's start/stop frames"
        resize = {
            "fused": f"FFmpeg crop=S:S:(W-S)/2:(H-S)/2,scale={self.size}:{self.size}:"
                     f"flags={p.scaler} per decoded frame (S = short side)",
            "torchvision": f"float bilinear short side {self.size}, no antialias "
                           "(torchvision 0.14 Resize), then centre crop",
            "antialias": f"uint8 bilinear antialias short side {self.size}, then centre crop",
        }[p.resize]
        info: dict[str, Any] = {
            "task": self.task,
            "layout": self.layout,
            "num_frames": self.num_frames,
            "preprocess": p.to_dict(),
            "timeline": p.timeline,
            "timeline_fps": p.fps,
            "sampling": sampling,
            "resize": resize,
            "crop": f"centre {self.size}x{self.size}",
            "normalisation": {"mean": list(p.mean), "std": list(p.std), "scale": "[0,255]"},
            "precision": p.precision,
            "frame_numbers": "a window mostly past its video's end or wholly before its start "
            "is a failed clip; smaller overruns are clamped",
        }
        if self.task == "anticipation":
            info.update(observed_s=self.observed_s, gap_s=self.gap_s)
        return info

    def source(self, index: int) -> Path:
        """The video file or frame folder of item `index`."""
        _, participant, video, *_ = self.rows[index]
        return video_path(self.video_root, participant, video, self.layout)

    def _length(self, path: Path) -> tuple[float | Fraction | None, int]:
        key = str(path)
        if key not in self._lengths:
            if self.layout == "video":
                info = probe_video(path)
                self._lengths[key] = (_video_rate(path, info.fps), info.num_frames)
            else:
                self._lengths[key] = (None, count_frame_files(path))
        return self._lengths[key]

    def frames(self, index: int) -> FrameSelection:
        """The 1-based frames of its source that item `index` reads (probes the video)."""
        selection, source_ids, _ = self._select(index)
        if self.preprocess.timeline == "native":
            first, last = selection.first + 1, selection.last + 1
        else:
            first, last = min(source_ids), max(source_ids)
        return FrameSelection(source_ids, first, last, selection.clamped)

    CHUNKED_VIDEOS_KEPT = 64
    """`ChunkedVideo`s a dataset keeps (per worker process), least recently used dropped first.
    A worker's batches are runs of consecutive rows (`extract.run.shard_batches`), so where the
    annotations list a video's segments together it meets a few videos at a time; an entry
    holds its chunks' start seconds and frame counts (bytes): the bound only caps a long run."""

    def _chunked_video(self, participant: str, video: str) -> ChunkedVideo:
        """The `extract.avion_layout.ChunkedVideo` of one video, kept across its clips: its
        folder listed once and each chunk probed once per worker process, not per clip (it
        caches no errors, so a failed listing or probe is tried again on the next clip, as
        before). A plain dict, filled lazily: the dataset pickles into DataLoader workers."""
        from extract.avion_layout import ChunkedVideo

        key = (participant, video)
        chunks = self._chunked.pop(key, None)
        if chunks is None:
            chunks = ChunkedVideo(self.video_root, participant, video)
            while len(self._chunked) >= self.CHUNKED_VIDEOS_KEPT:
                del self._chunked[next(iter(self._chunked))]  # the least recently used
        self._chunked[key] = chunks  # last: the most recently used
        return chunks

    def _chunks(self, index: int) -> tuple[FrameSelection, list[tuple[Path, list[int]]]]:
        """AVION's chunked layout: the selection and (chunk file, 0-based local ids) reads."""
        narration_id, participant, video, _, _, _, start_s, stop_s = self.rows[index]
        assert start_s is not None and stop_s is not None
        if self.task == "anticipation":
            start_s, stop_s = start_s - self.gap_s - self.observed_s, start_s - self.gap_s
        chunks = self._chunked_video(participant, video)  # one listing, 1 probe/chunk per video
        try:  # our failure rule (mostly past the end), then AVION's exact ids and clamp
            total = round(chunks.duration() * AVION_FPS)
            avion_frame_ids(start_s, stop_s, self.num_frames, total, f"{video} {narration_id}")
        except OutsideVideoError as error:
            raise VideoError(self.source(index), str(error)) from None
        ids = chunks.clip_frame_ids(start_s, stop_s, self.num_frames)
        clamped = chunks.clamp_end_s(stop_s) != stop_s
        selection = FrameSelection(tuple(ids), ids[0], ids[-1], clamped)
        return selection, chunks.chunk_reads(ids)

    def _select(self, index: int) -> tuple[FrameSelection, tuple[int, ...], float | None]:
        """(selection, 1-based source frames, timeline fps) of item `index`."""
        narration_id, _, video, start, stop, row_fps, start_s, stop_s = self.rows[index]
        if self.layout == "avion-chunks":
            selection, reads = self._chunks(index)
            return selection, tuple(i + 1 for _, local in reads for i in local), AVION_FPS
        video_fps, total = self._length(self.source(index))
        fps = row_fps or self.fps or video_fps
        name = f"{video} {narration_id}"
        try:
            if self.preprocess.timeline == "avion-30fps":
                assert start_s is not None and stop_s is not None and fps is not None
                if self.task == "anticipation":
                    start_s, stop_s = start_s - self.gap_s - self.observed_s, start_s - self.gap_s
                selection = avion_frame_ids(start_s, stop_s, self.num_frames,
                                            frames_on_30fps(total, fps), name)
                native = native_for_30fps(selection.ids, fps)
                source_ids = tuple(min(j, total - 1) + 1 for j in native)
                return selection, source_ids, float(AVION_FPS)
            selection = select_frames(
                start,
                stop,
                task=self.task,
                num_frames=self.num_frames,
                fps=fps,
                total_frames=total,
                observed_s=self.observed_s,
                gap_s=self.gap_s,
                name=name,
            )
            timeline_fps = float(fps) if fps else None
            zero_based = FrameSelection(tuple(i - 1 for i in selection.ids), selection.first - 1,
                                        selection.last - 1, selection.clamped)
            return zero_based, selection.ids, timeline_fps
        except OutsideVideoError as error:  # a failed clip (zeros + error), never a row
            raise VideoError(self.source(index), str(error)) from None

    def clip_plan(self, index: int) -> ClipPlan:
        """Which frames item `index` reads, without decoding any (probes the video)."""
        if self.layout == "avion-chunks":
            selection, reads = self._chunks(index)
            return ClipPlan(self.rows[index][0], tuple(str(path) for path, _ in reads),
                            float(AVION_FPS), selection.ids,
                            tuple(i + 1 for _, local in reads for i in local), selection.clamped)
        selection, source_ids, fps = self._select(index)
        return ClipPlan(self.rows[index][0], (str(self.source(index)),), fps, selection.ids,
                        source_ids, selection.clamped)

    def load(self, index: int) -> torch.Tensor:
        """The preprocessed clip of item `index`; raises `VideoError`."""
        path = self.source(index)
        ids = self._select(index)[1] if self.layout != "avion-chunks" else ()
        p = self.preprocess
        fused = None
        if p.resize == "fused":
            if self._fused is None:
                self._fused = FusedCropScale(self.size, p.scaler)
            fused = self._fused
        if self.layout == "avion-chunks":  # `ids` are 1-based within each chunk read
            raw = np.concatenate([
                read_video_frames(chunk, [i + 1 for i in local], threads=self.threads,
                                  convert=fused)
                for chunk, local in self._chunks(index)[1]
            ])
        elif self.layout == "video":
            raw = read_video_frames(path, ids, threads=self.threads, convert=fused)
        else:
            raw = read_frame_folder(path, ids, self.frame_template)
            if fused is not None:
                raw = np.stack([fused(frame) for frame in raw])
        if p.resize == "fused":
            return normalise(torch.as_tensor(raw).permute(0, 3, 1, 2), p.mean, p.std)
        if p.resize == "torchvision":
            return torchvision_clip(raw, self.size, p.mean, p.std)
        mean01 = [m / 255.0 for m in p.mean]
        std01 = [v / 255.0 for v in p.std]
        return preprocess_clip(raw, self.size, mean01, std01)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str]:
        narration_id = self.rows[index][0]
        try:
            return self.load(index), narration_id, ""
        except VideoError as error:
            if self.on_error == "raise":
                raise
            return torch.zeros(self.clip_shape), narration_id, str(error)


def _video_rate(path: Path, fps: float) -> Fraction:
    """The exact frame rate of a video (29.97 is 30000/1001), for the 30 fps mapping."""
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else _rate(fps)
