"""A small synthetic dataset in exactly the EK100 formats, for demos and tests.

    python -m extract.synthetic --out data/demo --seed 0 [--rgb-frames]

Writes `DIR/annotations/` (the EK100 CSVs: train, validation, test timestamps, verb and noun
classes, video info, tail classes, unseen participants), MP4 videos in the EK100 layout
`DIR/videos/<participant>/videos/<video_id>.MP4` and, with `--rgb-frames`, the JPEG layout
`DIR/rgb_frames/<participant>/<video_id>/frame_0000000001.jpg`.

Each segment shows one object on a cluttered, noisy kitchen-like background. The NOUN is its
appearance (shape, colour and texture per noun class); the VERB is only its motion over time
(up, down, grow, rotate, shake, ...). Start positions, sizes, angles and speeds are random
and a constant object's size is drawn from the same distribution a growing one passes
through, so one frame cannot tell the verb: a model has to use time. Classes are long-tailed
(higher ids rarer, as in EK100) so the tail files are meaningful. Everything is drawn from
`--seed`: the same seed gives byte-identical CSVs and rendered frames (the `--rgb-frames`
JPEGs) whatever --workers and the machine's load. The MP4s are encoded one thread per video
(libx264 `threads=1`, which PyAV also uses for the RGB-to-YUV conversion before it) and were
byte-identical in 60 pairs of runs under load, yet not always: clean-clone CI runs (2 cores)
twice encoded one video differently between --workers 1 and 2 (the second time 1.57 grey
levels apart on average, decoded). Reproduced once in 150 pairs of runs with four busy
processes beside them: the 60 rendered frames (their JPEGs) byte-identical, the two encodes
identical up to frame 18 and apart by 0.1-0.9 grey levels from there. So the renders are
deterministic and the encoder's decisions, under load, are not always; the cause inside
x264 / PyAV is not found. Decoded videos are only promised to agree closely (the test allows a
mean absolute difference under 4 grey levels; another seed differs by 37-58).
"""

from __future__ import annotations

import colorsys
import csv
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from features.config import cli, save_config

SEGMENT_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "narration_timestamp",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
    "narration",
    "verb",
    "verb_class",
    "noun",
    "noun_class",
    "all_nouns",
    "all_noun_classes",
)
TEST_COLUMNS = (
    "narration_id",
    "participant_id",
    "video_id",
    "start_timestamp",
    "stop_timestamp",
    "start_frame",
    "stop_frame",
)
CLASS_COLUMNS = ("id", "key", "instances", "category")
VIDEO_INFO_COLUMNS = ("video_id", "duration", "fps", "resolution")

# Real EK100 class keys; the synonym lists and categories are written for this demo.
# Each verb is bound to one motion, chosen to be loosely plausible (take = lift up).
VERBS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("take", ("take", "pick-up", "grab", "get"), "retrieve", "up"),
    ("put", ("put", "put-down", "place", "set-down"), "leave", "down"),
    ("open", ("open", "open-up", "unclose"), "access", "grow"),
    ("close", ("close", "shut", "close-off"), "access", "shrink"),
    ("turn", ("turn", "rotate", "twist"), "manipulate", "rotate-cw"),
    ("shake", ("shake", "jiggle", "rattle"), "manipulate", "shake-x"),
    ("move", ("move", "slide", "push-along"), "manipulate", "right"),
    ("remove", ("remove", "take-out", "pull-out"), "retrieve", "left"),
    ("mix", ("mix", "stir", "swirl"), "merge", "circle"),
    ("flip", ("flip", "flip-over", "invert"), "manipulate", "rotate-ccw"),
    ("wash", ("wash", "rinse", "scrub"), "clean", "shake-y"),
    ("pour", ("pour", "pour-into", "tip-out"), "distribute", "diagonal"),
)
NOUNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("tap", ("tap", "tap:water", "faucet"), "appliances"),
    ("spoon", ("spoon", "spoon:wooden", "teaspoon"), "cutlery"),
    ("plate", ("plate", "plate:dinner", "dish"), "crockery"),
    ("cupboard", ("cupboard", "cabinet", "cupboard:kitchen"), "furniture"),
    ("knife", ("knife", "knife:bread", "knife:sharp"), "cutlery"),
    ("pan", ("pan", "pan:frying", "skillet"), "cookware"),
    ("lid", ("lid", "lid:pan", "cover"), "cookware"),
    ("bowl", ("bowl", "bowl:mixing", "bowl:small"), "crockery"),
    ("drawer", ("drawer", "drawer:cutlery"), "furniture"),
    ("sponge", ("sponge", "sponge:dish", "scourer"), "cleaning equipment and material"),
    ("glass", ("glass", "glass:wine", "tumbler"), "crockery"),
    ("fridge", ("fridge", "refrigerator", "door:fridge"), "appliances"),
    ("cup", ("cup", "mug", "cup:coffee"), "crockery"),
    ("bottle", ("bottle", "bottle:water", "bottle:oil"), "containers"),
    ("onion", ("onion", "onion:red", "shallot"), "vegetables"),
    ("board:chopping", ("board:chopping", "chopping:board", "board:cutting"), "utensils"),
)
SHAPES = (
    "disc", "square", "triangle", "diamond", "hexagon", "star",
    "ring", "cross", "ellipse", "pentagon", "half-disc", "bar",
)
# every texture has an orientation, so a turning disc or ring visibly turns
TEXTURES = ("half", "stripes", "checker", "dots", "diagonal", "grid")
SPRITE_FRACTION = 0.2  # object size relative to the shorter frame side, at scale 1
NOISE_BANK = 8  # sensor-noise frames drawn per video and reused at random


@dataclass
class SyntheticConfig:
    """Write a small synthetic dataset in the EK100 formats (annotations, MP4s, JPEGs)."""

    out: Path = Path("data/demo")
    """Dataset root: `annotations/`, `videos/` and (with --rgb-frames) `rgb_frames/`."""
    seed: int = 0
    """Everything (labels, timing, motion, scenes, noise) follows from it."""
    videos: int = 13
    """Videos over all splits; participants P01, P02, ... get --videos-per-participant each."""
    videos_per_participant: int = 3
    val_videos: int | None = None
    """Validation videos (default: a quarter). The last participant's videos all go here,
    so that participant is unseen in train; then the last video of earlier participants."""
    test_videos: int | None = None
    """Videos listed without labels in `EPIC_100_test_timestamps.csv` (default: a tenth)."""
    segments_per_video: int = 22
    num_verbs: int = 8
    """Verb classes, at most 12; each is one motion (up, down, grow, shrink, turn, ...)."""
    num_nouns: int = 12
    """Noun classes, at most 16; each is one shape + hue + texture."""
    width: int = 320
    """Frame width in pixels (even, for yuv420p)."""
    height: int = 240
    fps: float = 30.0
    """Frame rate (EK100 itself is mostly 60 or 50; 30 keeps the demo small)."""
    min_duration: float = 1.0
    """Shortest segment, seconds."""
    max_duration: float = 3.0
    """Longest segment, seconds."""
    imbalance: float = 0.8
    """Class k has weight 1/(k+1)**imbalance: higher ids are rarer (0 = balanced)."""
    tail_share: float = 0.2
    """Tail classes: the rarest classes that together hold this share of train segments."""
    clutter: int = 30
    """Static background shapes per video."""
    noise: float = 6.0
    """Per-frame sensor noise, standard deviation in 8-bit levels."""
    rgb_frames: bool = False
    """Also write every frame as `rgb_frames/<participant>/<video_id>/frame_%010d.jpg`."""
    codec: Literal["libx264", "mpeg4"] = "libx264"
    """Video codec; mpeg4 is there for FFmpeg builds without libx264."""
    crf: int = 23
    """libx264 constant rate factor (lower = better); mpeg4 uses qscale = crf // 8."""
    workers: int = 2
    """Videos rendered in parallel processes (1 = in this process)."""


@dataclass(frozen=True)
class Video:
    participant_id: str
    video_id: str
    split: str  # train, validation or test


@dataclass(frozen=True)
class Segment:
    """One annotated action: frames are 1-based and inclusive, like EK100."""

    narration_id: str
    video: Video
    start_frame: int
    stop_frame: int
    narration_offset: float  # narration time minus start time, seconds
    verb_class: int
    verb: str
    noun_class: int
    noun: str
    narration: str
    # per-frame object pose over start_frame..stop_frame
    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray  # degrees, counter-clockwise


@dataclass(frozen=True)
class VideoJob:
    """Everything a worker needs to render one video, so rendering is order-independent."""

    video: Video
    n_frames: int
    segments: tuple[Segment, ...]
    seed: tuple[int, ...]
    config: SyntheticConfig


# ---------------------------------------------------------------------------- formats


def timestamp(seconds: float, digits: int = 2) -> str:
    """EK100 time format: `00:01:02.35` (segments) or `00:01:02.350` (narrations)."""
    unit = 10**digits
    ticks = round(max(seconds, 0.0) * unit)
    whole, frac = divmod(ticks, unit)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{frac:0{digits}d}"


def phrase(instance: str, noun: bool) -> str:
    """How an instance is said in a narration: `put-down` -> put down, `tap:water` -> water tap."""
    if noun:
        return " ".join(reversed(instance.split(":")))
    return instance.replace("-", " ")


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------- planning


def _check(config: SyntheticConfig) -> None:
    problems = []
    if not 1 <= config.num_verbs <= len(VERBS):
        problems.append(f"--num-verbs must be 1..{len(VERBS)}")
    if not 1 <= config.num_nouns <= len(NOUNS):
        problems.append(f"--num-nouns must be 1..{len(NOUNS)}")
    if config.width % 2 or config.height % 2 or min(config.width, config.height) < 32:
        problems.append("--width and --height must be even and at least 32 (yuv420p)")
    if config.fps <= 0 or not 0 < config.min_duration <= config.max_duration:
        problems.append("need --fps > 0 and 0 < --min-duration <= --max-duration")
    if config.segments_per_video < 1 or config.videos_per_participant < 1:
        problems.append("--segments-per-video and --videos-per-participant must be >= 1")
    if (config.val_videos is not None and config.val_videos < 1) or (
        config.test_videos is not None and config.test_videos < 0
    ):
        problems.append("need --val-videos >= 1 and --test-videos >= 0")
    if problems:
        raise ValueError("; ".join(problems))


def plan_videos(config: SyntheticConfig) -> list[Video]:
    """Participants in order; validation holds the last (unseen) participant and more."""
    per = config.videos_per_participant
    owners = [index // per for index in range(config.videos)]
    people = [f"P{owner + 1:02d}" for owner in owners]
    names = [f"{people[i]}_{i - owner * per + 1:02d}" for i, owner in enumerate(owners)]
    last = owners[-1] if owners else 0
    split = ["train"] * config.videos
    unseen = [i for i, owner in enumerate(owners) if owner == last]
    val_videos = config.val_videos
    if val_videos is None:
        val_videos = max(len(unseen), round(config.videos / 4))
    test_videos = config.videos // 10 if config.test_videos is None else config.test_videos
    if last == 0 or len(unseen) > val_videos:
        raise ValueError(
            f"validation needs a participant unseen in train: with --videos {config.videos} "
            f"and --videos-per-participant {per} the last participant has {len(unseen)} "
            f"video(s), so use --val-videos >= {len(unseen)} and at least two participants"
        )
    for i in unseen:
        split[i] = "validation"
    # then the last video of earlier participants, newest participant first
    lasts = [max(i for i, o in enumerate(owners) if o == owner) for owner in range(last)]
    for i in reversed(lasts):
        if split.count("validation") >= val_videos:
            break
        split[i] = "validation"
    # test: the last remaining video of earlier participants, oldest first
    for owner in range(last):
        if split.count("test") >= test_videos:
            break
        mine = [i for i, o in enumerate(owners) if o == owner and split[i] == "train"]
        if len(mine) > 1:
            split[mine[-1]] = "test"
    counts = {name: split.count(name) for name in ("train", "validation", "test")}
    if (
        counts["validation"] < val_videos
        or counts["test"] < test_videos
        or not counts["train"]
    ):
        raise ValueError(
            f"cannot place {val_videos} validation and {test_videos} test videos "
            f"among {config.videos} videos and keep train videos; use more --videos"
        )
    return [Video(*row) for row in zip(people, names, split, strict=True)]


def quota_labels(rng: np.random.Generator, n: int, classes: int, imbalance: float) -> np.ndarray:
    """`n` labels with long-tailed counts fixed by largest remainder, in random order.

    Fixed counts (rather than sampling) keep every class present when `n` allows it, so a
    small demo never trains on a split that silently lacks a class.
    """
    weights = 1.0 / np.arange(1, classes + 1) ** imbalance
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    if n >= classes:
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(exact - counts), kind="stable")
    for k in order[: n - counts.sum()]:
        counts[k] += 1
    return rng.permutation(np.repeat(np.arange(classes), counts))


def trajectory(
    rng: np.random.Generator, motion: str, frames: int, config: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre, scale and angle of the object for one verb's motion.

    Nuisances (mid-point, size, start angle, small drift) are drawn the same way for every
    verb; only the motion term depends on it. Size is `s_mid * ratio**u` with u uniform for a
    static object and u running from -1/2 to 1/2 for grow, so one frame's size is no clue.
    """
    width, height = config.width, config.height
    side = min(width, height)
    seconds = np.arange(frames) / config.fps
    tau = np.linspace(-0.5, 0.5, frames)  # normalised time, centred
    s_mid, ratio = rng.uniform(0.8, 1.15), rng.uniform(1.6, 2.1)
    angle0 = rng.uniform(0.0, 360.0)
    drift = rng.uniform(0.0, 0.04 * side) * np.array(
        [math.cos(a := rng.uniform(0, 2 * math.pi)), math.sin(a)]
    )
    distance = rng.uniform(0.25, 0.4) * side
    amplitude, hertz = rng.uniform(0.05, 0.08) * side, rng.uniform(2.0, 3.5)
    phase = rng.uniform(0, 2 * math.pi)
    radius, spin = rng.uniform(0.08, 0.12) * side, rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
    turn = rng.uniform(120.0, 200.0)  # degrees per second
    u = rng.uniform(-0.5, 0.5)

    dx = drift[0] * tau
    dy = drift[1] * tau
    scale = np.full(frames, s_mid * ratio**u)
    angle = np.full(frames, angle0)
    if motion in ("up", "down", "left", "right", "diagonal"):
        direction = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0),
                     "diagonal": (0.71, 0.71)}[motion]
        dx = dx + distance * tau * direction[0]
        dy = dy + distance * tau * direction[1]
    elif motion in ("grow", "shrink"):
        scale = s_mid * ratio ** (tau if motion == "grow" else -tau)
    elif motion in ("rotate-cw", "rotate-ccw"):
        angle = angle0 + turn * seconds * (1 if motion == "rotate-ccw" else -1)
    elif motion in ("shake-x", "shake-y"):
        wave = amplitude * np.sin(2 * math.pi * hertz * seconds + phase)
        dx, dy = (dx + wave, dy) if motion == "shake-x" else (dx, dy + wave)
    elif motion == "circle":
        theta = phase + 2 * math.pi * spin * seconds
        dx = dx + radius * np.cos(theta)
        dy = dy + radius * np.sin(theta)
    else:
        raise ValueError(f"unknown motion {motion!r}")

    reach = 0.72 * SPRITE_FRACTION * side * scale.max()  # half-diagonal of the rotated sprite
    centre = []
    for offset, extent in ((dx, width), (dy, height)):
        low, high = reach - offset.min(), extent - reach - offset.max()
        centre.append(rng.uniform(low, high) if low < high else extent / 2 - offset.mean())
    return centre[0] + dx, centre[1] + dy, scale, angle % 360.0


def plan_segments(
    config: SyntheticConfig, videos: list[Video], rng: np.random.Generator
) -> tuple[list[Segment], dict[str, int]]:
    """Labels, timing and motion of every segment; returns them and each video's length."""
    labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "validation", "test"):
        n = sum(v.split == split for v in videos) * config.segments_per_video
        verbs = quota_labels(rng, n, config.num_verbs, config.imbalance)
        nouns = quota_labels(rng, n, config.num_nouns, config.imbalance)
        labels[split] = (verbs, nouns)
    used = dict.fromkeys(labels, 0)
    segments: list[Segment] = []
    lengths: dict[str, int] = {}
    for video in videos:
        frame = round(rng.uniform(0.2, 0.6) * config.fps) + 1  # first frame of next segment
        for index in range(config.segments_per_video):
            verb_class = int(labels[video.split][0][used[video.split]])
            noun_class = int(labels[video.split][1][used[video.split]])
            used[video.split] += 1
            frames = max(2, round(rng.uniform(config.min_duration, config.max_duration)
                                  * config.fps))
            verb_key, verb_instances, _, motion = VERBS[verb_class]
            noun_key, noun_instances, _ = NOUNS[noun_class]
            # the key itself half of the time, else a synonym, as narrators vary
            verb = verb_key if rng.random() < 0.5 else str(rng.choice(verb_instances))
            noun = noun_key if rng.random() < 0.5 else str(rng.choice(noun_instances))
            cx, cy, scale, angle = trajectory(rng, motion, frames, config)
            segments.append(
                Segment(
                    narration_id=f"{video.video_id}_{index}",
                    video=video,
                    start_frame=frame,
                    stop_frame=frame + frames - 1,
                    narration_offset=float(rng.uniform(-0.3, 0.6)),
                    verb_class=verb_class,
                    verb=verb,
                    noun_class=noun_class,
                    noun=noun,
                    narration=f"{phrase(verb, noun=False)} {phrase(noun, noun=True)}",
                    cx=cx,
                    cy=cy,
                    scale=scale,
                    angle=angle,
                )
            )
            # a gap of background-only frames (>= 2) keeps segments apart and visible as such
            frame += frames + max(2, round(rng.uniform(0.15, 0.6) * config.fps))
        lengths[video.video_id] = frame + round(rng.uniform(0.0, 0.4) * config.fps) - 1
    return segments, lengths


def tail_classes(labels: list[int], classes: int, share: float) -> list[int]:
    """EK100-style tail: the rarest classes that together hold `share` of the instances."""
    counts = np.bincount(labels, minlength=classes)
    order = sorted(range(classes), key=lambda k: (-counts[k], k))
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]]) / max(counts.sum(), 1)
    return sorted(k for k, seen in zip(order, before, strict=True) if seen >= 1 - share)


# ---------------------------------------------------------------------------- rendering


def noun_sprite(noun_class: int, num_nouns: int, size: int) -> Image.Image:
    """The look of a noun class: a shape, a hue and a texture, as an RGBA image.

    Drawn at 4x and downsampled so edges stay smooth when the sprite is small.
    """
    big = size * 4
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    c, r = big / 2, big * 0.46
    shape = SHAPES[noun_class % len(SHAPES)]

    def polygon(points: int, start: float = -90.0, inner: float | None = None) -> list:
        vertices = []
        steps = points * (2 if inner else 1)
        for i in range(steps):
            a = math.radians(start + 360.0 * i / steps)
            rad = r * (inner if inner and i % 2 else 1.0)
            vertices.append((c + rad * math.cos(a), c + rad * math.sin(a)))
        return vertices

    if shape == "disc":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "square":
        draw.rectangle([c - 0.75 * r, c - 0.75 * r, c + 0.75 * r, c + 0.75 * r], fill=255)
    elif shape == "triangle":
        draw.polygon(polygon(3), fill=255)
    elif shape == "diamond":
        draw.polygon(polygon(4), fill=255)
    elif shape == "hexagon":
        draw.polygon(polygon(6, 0.0), fill=255)
    elif shape == "star":
        draw.polygon(polygon(5, inner=0.45), fill=255)
    elif shape == "ring":
        draw.ellipse([c - r, c - r, c + r, c + r], fill=255)
        draw.ellipse([c - 0.5 * r, c - 0.5 * r, c + 0.5 * r, c + 0.5 * r], fill=0)
    elif shape == "cross":
        draw.rectangle([c - r, c - 0.33 * r, c + r, c + 0.33 * r], fill=255)
        draw.rectangle([c - 0.33 * r, c - r, c + 0.33 * r, c + r], fill=255)
    elif shape == "ellipse":
        draw.ellipse([c - r, c - 0.55 * r, c + r, c + 0.55 * r], fill=255)
    elif shape == "pentagon":
        draw.polygon(polygon(5), fill=255)
    elif shape == "half-disc":
        draw.pieslice([c - r, c - 0.6 * r, c + r, c + 1.4 * r], 180, 360, fill=255)
    else:  # bar
        draw.rectangle([c - r, c - 0.28 * r, c + r, c + 0.28 * r], fill=255)

    yy, xx = np.mgrid[0:big, 0:big] / big * 6.0  # six texture periods across the sprite
    texture = TEXTURES[noun_class % len(TEXTURES)]
    pattern = {
        "half": xx < 3.0,
        "stripes": (yy % 1.0) < 0.5,
        "checker": ((np.floor(xx) + np.floor(yy)) % 2) == 1,
        "dots": ((xx % 1.0 - 0.5) ** 2 + (yy % 1.0 - 0.5) ** 2) < 0.09,
        "diagonal": ((xx + yy) % 1.0) < 0.5,
        "grid": ((xx % 1.0) < 0.25) | ((yy % 1.0) < 0.25),
    }[texture].astype(np.float32)
    hue = noun_class / num_nouns
    value = 0.95 if noun_class % 2 == 0 else 0.8
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.85, value), dtype=np.float32) * 255.0
    pixels = rgb[None, None, :] * (1.0 - 0.45 * pattern[..., None])
    rgba = np.dstack([pixels, np.asarray(mask, dtype=np.float32)]).round().astype(np.uint8)
    return Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.LANCZOS)


def background(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """A static kitchen-ish scene: wall, counter, muted clutter and fixed grain."""
    width, height = config.width, config.height
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)

    def muted(low: float, high: float) -> tuple[int, int, int]:
        hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(low, high)
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        return round(r * 255), round(g * 255), round(b * 255)

    edge = round(rng.uniform(0.35, 0.6) * height)
    wall, counter = muted(0.6, 0.9), muted(0.3, 0.6)
    draw.rectangle([0, 0, width, edge], fill=wall)
    draw.rectangle([0, edge, width, height], fill=counter)
    for _ in range(config.clutter):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.25) * height
        box = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle(box, fill=muted(0.2, 0.9))
        elif kind == 1:
            draw.ellipse(box, fill=muted(0.2, 0.9))
        else:
            draw.line(box, fill=muted(0.1, 0.9), width=int(rng.integers(1, 5)))
    grain = rng.normal(0.0, 4.0, (height, width, 1))
    return np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)


def paste(canvas: np.ndarray, sprite: Image.Image, cx: float, cy: float) -> tuple[slice, slice]:
    """Alpha-blend `sprite` centred at (cx, cy) into `canvas`, clipping at the borders.

    Returns the rows and columns it touched (empty slices when fully outside).
    """
    rgba = np.asarray(sprite, dtype=np.float32)
    h, w = rgba.shape[:2]
    x0, y0 = round(cx - w / 2), round(cy - h / 2)
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if top >= bottom or left >= right:
        return slice(0, 0), slice(0, 0)
    part = rgba[top - y0 : bottom - y0, left - x0 : right - x0]
    alpha = part[..., 3:] / 255.0
    region = canvas[top:bottom, left:right].astype(np.float32)
    blended = region * (1 - alpha) + part[..., :3] * alpha
    canvas[top:bottom, left:right] = (blended + 0.5).astype(np.uint8)
    return slice(top, bottom), slice(left, right)


def render_frames(job: VideoJob) -> Iterator[np.ndarray]:
    """Yield the video's frames (RGB uint8, H x W x 3) in order.

    Every frame is clip(scene + object + noise[k]) with k random per frame. The noisy scenes
    are precomputed for each k, so per frame only the object's box needs the arithmetic.
    """
    config = job.config
    rng = np.random.default_rng(list(job.seed))
    scene = background(rng, config)
    noise = rng.normal(0.0, config.noise, (NOISE_BANK, config.height, config.width, 3))
    noise = noise.round().astype(np.int16)
    noisy = np.clip(scene.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    picks = rng.integers(NOISE_BANK, size=job.n_frames)
    size = round(SPRITE_FRACTION * min(config.width, config.height))
    sprites = {
        s.noun_class: noun_sprite(s.noun_class, config.num_nouns, size) for s in job.segments
    }
    at = {}
    for segment in job.segments:
        for offset in range(segment.stop_frame - segment.start_frame + 1):
            at[segment.start_frame + offset] = (segment, offset)
    for number in range(1, job.n_frames + 1):
        k = picks[number - 1]
        if number not in at:
            yield noisy[k].copy()
            continue
        segment, i = at[number]
        side = max(2, round(size * float(segment.scale[i])))
        posed = sprites[segment.noun_class].resize((side, side), Image.Resampling.BILINEAR)
        posed = posed.rotate(
            float(segment.angle[i]), resample=Image.Resampling.BILINEAR, expand=True
        )
        canvas = scene.copy()
        rows, cols = paste(canvas, posed, float(segment.cx[i]), float(segment.cy[i]))
        frame = noisy[k].copy()
        box = canvas[rows, cols].astype(np.int16) + noise[k, rows, cols]
        frame[rows, cols] = np.clip(box, 0, 255).astype(np.uint8)
        yield frame


def video_path(root: Path, video: Video) -> Path:
    return root / "videos" / video.participant_id / "videos" / f"{video.video_id}.MP4"


def render_video(job: VideoJob) -> tuple[str, int]:
    """Encode one video (and its JPEG frames); returns (video_id, frames written)."""
    import av  # only encoding needs PyAV; annotation-only callers (training tests) do not

    config = job.config
    path = video_path(config.out, job.video)
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg_dir = config.out / "rgb_frames" / job.video.participant_id / job.video.video_id
    if config.rgb_frames:
        shutil.rmtree(jpeg_dir, ignore_errors=True)  # no stale frames from a longer video
        jpeg_dir.mkdir(parents=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    with av.open(str(partial), "w", format="mp4") as container:
        rate = Fraction(config.fps).limit_denominator(1001)
        stream = container.add_stream(config.codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = config.width, config.height, "yuv420p"
        # one thread for x264 and PyAV's rgb24 -> yuv420p conversion (it takes the codec's
        # count): the bytes do not depend on the cores; parallelism is across videos
        stream.thread_count = 1
        if config.codec == "libx264":
            stream.options = {"crf": str(config.crf), "preset": "veryfast"}
        else:
            stream.options = {"qscale": str(max(1, config.crf // 8))}
        for frame in render_frames(job):
            count += 1
            if config.rgb_frames:
                Image.fromarray(frame).save(jpeg_dir / f"frame_{count:010d}.jpg", quality=90)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(partial, path)
    return job.video.video_id, count


# ---------------------------------------------------------------------------- output


def write_annotations(
    config: SyntheticConfig, videos: list[Video], segments: list[Segment], lengths: dict[str, int]
) -> Path:
    """All EK100 annotation CSVs for the planned dataset."""
    root = config.out / "annotations"
    fps = config.fps
    verbs, nouns = VERBS[: config.num_verbs], NOUNS[: config.num_nouns]
    _write_csv(root / "EPIC_100_verb_classes.csv", CLASS_COLUMNS,
               [(i, key, str(list(inst)), cat) for i, (key, inst, cat, _) in enumerate(verbs)])
    _write_csv(root / "EPIC_100_noun_classes.csv", CLASS_COLUMNS,
               [(i, key, str(list(inst)), cat) for i, (key, inst, cat) in enumerate(nouns)])


    def times(s: Segment) -> tuple[str, str]:
        # frame f covers [(f-1)/fps, f/fps): start at the first frame's start, stop at the
        # last frame's end, so round(start*fps)+1 and round(stop*fps) give the frames back
        return timestamp((s.start_frame - 1) / fps), timestamp(s.stop_frame / fps)

    for split in ("train", "validation"):
        rows = []
        for s in segments:
            if s.video.split != split:
                continue
            start, stop = times(s)
            spoken = timestamp((s.start_frame - 1) / fps + s.narration_offset, digits=3)
            rows.append((s.narration_id, s.video.participant_id, s.video.video_id, spoken,
                         start, stop, s.start_frame, s.stop_frame, s.narration, s.verb,
                         s.verb_class, s.noun, s.noun_class, str([s.noun]),
                         str([s.noun_class])))
        _write_csv(root / f"EPIC_100_{split}.csv", SEGMENT_COLUMNS, rows)
    _write_csv(
        root / "EPIC_100_test_timestamps.csv",
        TEST_COLUMNS,
        [(s.narration_id, s.video.participant_id, s.video.video_id, *times(s), s.start_frame,
          s.stop_frame) for s in segments if s.video.split == "test"],
    )
    _write_csv(
        root / "EPIC_100_video_info.csv",
        VIDEO_INFO_COLUMNS,
        [(v.video_id, f"{lengths[v.video_id] / fps:.6f}", repr(float(fps)),
          f"{config.width}x{config.height}") for v in videos],
    )
    train = [s for s in segments if s.video.split == "train"]
    tail_v = tail_classes([s.verb_class for s in train], config.num_verbs, config.tail_share)
    tail_n = tail_classes([s.noun_class for s in train], config.num_nouns, config.tail_share)
    _write_csv(root / "EPIC_100_tail_verbs.csv", ("verb",), [(k,) for k in tail_v])
    _write_csv(root / "EPIC_100_tail_nouns.csv", ("noun",), [(k,) for k in tail_n])
    seen = {v.participant_id for v in videos if v.split == "train"}
    unseen = sorted({v.participant_id for v in videos if v.split == "validation"} - seen)
    _write_csv(root / "EPIC_100_unseen_participant_ids_validation.csv", ("participant_id",),
               [(p,) for p in unseen])
    return root


def generate(config: SyntheticConfig) -> Path:
    """Plan, write the annotations, render every video; returns the dataset root."""
    _check(config)
    config.out.mkdir(parents=True, exist_ok=True)
    videos = plan_videos(config)
    rng = np.random.default_rng(config.seed)
    segments, lengths = plan_segments(config, videos, rng)
    write_annotations(config, videos, segments, lengths)
    save_config(config, config.out / "synthetic_config.json")
    jobs = [
        VideoJob(v, lengths[v.video_id], tuple(s for s in segments if s.video == v),
                 (config.seed, index), config)
        for index, v in enumerate(videos)
    ]
    total = sum(job.n_frames for job in jobs)
    with tqdm(total=total, unit="frame", desc="rendering videos") as bar:
        if config.workers <= 1 or len(jobs) == 1:
            for job in jobs:
                bar.update(render_video(job)[1])
        else:
            with ProcessPoolExecutor(max_workers=min(config.workers, len(jobs))) as pool:
                for future in as_completed([pool.submit(render_video, job) for job in jobs]):
                    bar.update(future.result()[1])
    # left alone (they may be someone's), but said, since loaders would find them
    planned = {video_path(config.out, v) for v in videos}
    stale = sorted(set((config.out / "videos").glob("*/videos/*.MP4")) - planned)
    if stale:
        print(f"note: {len(stale)} video(s) under {config.out / 'videos'} are not in this "
              f"dataset (an earlier run?), e.g. {stale[0]}", file=sys.stderr)
    return config.out


def main(argv: list[str] | None = None) -> None:
    config = cli(SyntheticConfig, args=argv)
    began = time.perf_counter()
    try:
        root = generate(config)
    except ValueError as error:
        sys.exit(f"error: {error}")
    counts = {}
    with open(root / "annotations" / "EPIC_100_video_info.csv", encoding="utf-8") as handle:
        videos = sum(1 for _ in handle) - 1
    for split in ("train", "validation", "test_timestamps"):
        with open(root / "annotations" / f"EPIC_100_{split}.csv", encoding="utf-8") as handle:
            counts[split] = sum(1 for _ in handle) - 1
    frames = f", rgb_frames in {root / 'rgb_frames'}" if config.rgb_frames else ""
    print(
        f"wrote {counts['train']} train / {counts['validation']} validation / "
        f"{counts['test_timestamps']} test segments in {videos} videos in "
        f"{time.perf_counter() - began:.1f}s: annotations in {root / 'annotations'}, "
        f"videos in {root / 'videos'}{frames}"
    )


if __name__ == "__main__":
    from features.errors import run_cli

    sys.exit(run_cli(main))
