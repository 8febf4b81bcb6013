"""AVION's chunked EK100 copy: where a clip's frames are, and reading them.

Why: AVION's fine-tuned ViTs only saw AVION's own re-encodes of EK100 (320p short side,
30 fps, libx264, 15-second chunks), read through AVION's chunk arithmetic. Users who hold
that copy (or write it with `python -m extract.reencode`) should get exactly AVION's frames.

Layout (AVION `datasets/README.md`, "EPIC-Kitchens-100", commit
31b00b6bc5d2c09f56b90643cd546cfe8a31c005 of zhaoyue-zephyrus/AVION):

    <root>/<participant>/<video_id>.MP4/0.MP4, 15.MP4, 30.MP4, ...   (start second)

Frames live on one timeline of `fps` frames per second, 0-based; global frame `i` is local
frame `i - c * fps` of the chunk starting at second `c = (i // (chunk_s * fps)) * chunk_s`.
All arithmetic below follows `video_loader` in `avion/data/clip_dataset.py` (same commit),
its chunked branch (`chunk_len != -1`; `--video-chunk-length 15` in
`scripts/main_lavila_finetune_cls.py`), here methods of `ChunkedVideo`:

- `chunk_reads` is its "allocate absolute frame-ids into the relative ones" loop;
- `clamp_end_s` is its end clamp: start from the chunk `int(end_s) // chunk_s * chunk_s`,
  step back to the last chunk that exists, and cap `end_s` at that chunk's last frame,
  `(len(chunk) - 1) / fps + chunk_start` (so only the last chunk, which may be shorter,
  normally clamps);
- `clip_frame_ids` is `get_frame_ids(int(np.round(start_s * fps)),
  int(np.round(end_s * fps)), num_frames, jitter=False)` on the clamped end.

AVION reads `fps` from each video's `0.MP4` (decord `get_avg_fps`); here it is a parameter
checked against every chunk read, so a copy at another rate fails instead of drifting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from extract.video import VideoError, probe_video, read_video_frames, sample_frame_ids

FPS = 30
CHUNK_S = 15
CHUNK_NAME = re.compile(r"^(\d+)\.MP4$")


def chunk_folder(root: str | os.PathLike, participant: str, video_id: str) -> Path:
    """`<root>/<participant>/<video_id>.MP4/`, the folder of one video's chunks."""
    return Path(root) / participant / f"{video_id}.MP4"


def _chunk_names(folder: Path) -> list[int]:
    """Start seconds of the `<int>.MP4` files in `folder` (other files are ignored)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise VideoError(folder, "chunk folder not found (AVION layout "
                                 "<root>/<participant>/<video_id>.MP4/0.MP4); check --videos "
                                 "or write it with python -m extract.reencode") from None
    except NotADirectoryError:
        raise VideoError(folder, "is a file, not AVION's chunk folder: for raw videos use "
                                 "the video layout") from None
    return sorted(int(m.group(1)) for n in names if (m := CHUNK_NAME.match(n)))


def is_avion_chunks(videos_root: str | os.PathLike) -> bool:
    """True if `videos_root` holds a `<participant>/<video_id>.MP4/` folder of `<int>.MP4` chunks.

    The raw EK100 layout keeps `<participant>/videos/<video_id>.MP4` files, so the two never
    look alike.
    """
    root = Path(videos_root)
    if not root.is_dir():
        return False
    for participant in root.iterdir():
        if not participant.is_dir():
            continue
        for folder in participant.glob("*.MP4"):
            if folder.is_dir() and any(CHUNK_NAME.match(n) for n in os.listdir(folder)):
                return True
    return False


def chunk_frames(path: str | os.PathLike, fps: int = FPS) -> int:
    """Frames in one chunk file (container metadata), after checking its frame rate."""
    info = probe_video(path)
    if abs(info.fps - fps) > 1e-3:
        raise VideoError(path, f"chunk is {info.fps:g} fps, not {fps}: not AVION's {fps} fps "
                               "copy (write one with python -m extract.reencode)")
    return info.num_frames


@dataclass(frozen=True)
class ChunkedVideo:
    """One video in AVION's chunked layout: `<root>/<participant>/<video_id>.MP4/<start>.MP4`.

    The folder is listed once per object (`starts`) and each chunk's container probed at most
    once (`frames`), so building one per segment and asking it for the clamp, the frame ids
    and the reads costs one listing and one probe per chunk touched. Errors are not cached: a
    failed check is made again on the next call.
    """

    root: str | os.PathLike
    participant: str
    video_id: str
    fps: int = FPS
    chunk_s: int = CHUNK_S
    _frames: dict[int, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        """`<root>/<participant>/<video_id>.MP4/`, the folder of this video's chunks."""
        return chunk_folder(self.root, self.participant, self.video_id)

    @cached_property
    def _starts(self) -> tuple[int, ...]:
        folder, chunk_s = self.folder, self.chunk_s
        starts = _chunk_names(folder)
        if not starts:
            raise VideoError(folder, "no <start second>.MP4 chunks in the folder (an interrupted "
                                     "python -m extract.reencode? rerun it)")
        expected = list(range(0, starts[-1] + 1, chunk_s))
        odd = [s for s in starts if s % chunk_s]
        if odd:
            raise VideoError(folder, f"chunk {odd[0]}.MP4 does not start at a multiple of "
                                     f"{chunk_s} s: chunks of another length? (chunk_s={chunk_s})")
        missing = sorted(set(expected) - set(starts))
        if missing:
            raise VideoError(folder, f"chunk {missing[0]}.MP4 is missing ({len(missing)} gap(s) "
                                     f"before the last chunk {starts[-1]}.MP4); restore it or "
                                     "rerun python -m extract.reencode")
        return tuple(starts)

    def starts(self) -> list[int]:
        """The chunks' start seconds, `[0, chunk_s, 2 * chunk_s, ...]`; a gap is a `VideoError`.

        AVION's loader only steps back over missing chunks at the video's end; a chunk missing
        in the middle would make it read the wrong frames, so it is refused here.
        """
        return list(self._starts)

    def frames(self, start: int) -> int:
        """Frames in the chunk starting at second `start` (`chunk_frames`, probed once)."""
        if start not in self._frames:
            self._frames[start] = chunk_frames(self.folder / f"{start}.MP4", self.fps)
        return self._frames[start]

    def duration(self) -> float:
        """Seconds of video in the chunks: the last chunk's start plus its frames / fps."""
        last = self._starts[-1]
        return last + self.frames(last) / self.fps

    def clamp_end_s(self, end_s: float) -> float:
        """AVION's end clamp: `end_s` capped at the last frame of the chunk that holds it.

        That chunk is `int(end_s) // chunk_s * chunk_s`, or the last chunk when the end lies
        past the video (AVION steps back over chunk files that do not exist).
        """
        chunk = min(int(end_s) // self.chunk_s * self.chunk_s, self._starts[-1])
        return min(end_s, (self.frames(chunk) - 1) / self.fps + chunk)

    def clip_frame_ids(self, start_s: float, end_s: float, num_frames: int = 16) -> list[int]:
        """AVION's test-time frame ids (0-based, on the `fps` timeline) of a segment in seconds."""
        end_s = self.clamp_end_s(end_s)
        first, last = int(np.round(start_s * self.fps)), int(np.round(end_s * self.fps))
        if first > last + 1:
            raise VideoError(self.folder, f"segment {start_s:.2f}-{end_s:.2f} s starts after the "
                                          f"video's last frame at {end_s:.2f} s; wrong video or "
                                          "times?")
        # a start rounded one frame past the clamped end: AVION's backwards linspace floors every
        # midpoint to `last`, as the forwards one over (last, last + 1) does
        return sample_frame_ids(min(first, last), max(first, last), num_frames)

    def chunk_reads(self, frame_ids: Sequence[int]) -> list[tuple[Path, list[int]]]:
        """Which chunk files and which 0-based local frames give `frame_ids` (sorted, 0-based).

        Frames of a segment that crosses a chunk boundary come from both chunks, in order. Ids
        past the last chunk's last frame, or in a missing chunk, are a `VideoError`.
        """
        ids = [int(i) for i in frame_ids]
        if not ids:
            raise ValueError("no frame ids")
        if ids != sorted(ids):
            raise ValueError(f"frame ids must be sorted (AVION reads chunks in order), got {ids}")
        folder, fps, chunk_s = self.folder, self.fps, self.chunk_s
        if ids[0] < 0:
            raise VideoError(folder, f"frame id {ids[0]} is before the video's first frame 0")
        last = self._starts[-1]
        per = fps * chunk_s
        reads: dict[int, list[int]] = {}
        for i in ids:
            reads.setdefault(i // per * chunk_s, []).append(i % per)
        frames = self.frames(last) if max(reads) >= last else per
        end = last * fps + frames - 1
        if max(reads) > last or (max(reads) == last and reads[last][-1] >= frames):
            raise VideoError(folder, f"frame {ids[-1]} is past the video's last frame {end} "
                                     f"({end / fps:.2f} s at {fps} fps); clamp the segment's end "
                                     "(clamp_end_s) or check the video")
        return [(folder / f"{start}.MP4", local) for start, local in sorted(reads.items())]

    def read_frames(self, frame_ids: Sequence[int], threads: int = 1) -> np.ndarray:
        """Decode the 0-based `frame_ids` (sorted) from the chunks: uint8 (T, H, W, 3) RGB."""
        parts = []
        for path, local in self.chunk_reads(frame_ids):
            self.frames(int(path.stem))  # the rate check: read_video_frames numbers frames by it
            parts.append(read_video_frames(path, [i + 1 for i in local], threads=threads))
        return np.concatenate(parts)
