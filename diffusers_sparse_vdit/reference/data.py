"""Procedural captioned video: the data the reference pipelines learn from.

A scene is a textured background seen by a moving camera, one to three objects (colour,
shape, size, motion) drawn in order so that later ones occlude earlier ones, and now and
then a static shot or a cut to a second scene half-way. Its caption names all of it, so a
text-to-video model has to read the prompt to get the video right. The structure is chosen
so heads of different kinds pay off: objects are small and local (spatial heads), motion
and camera pans link the same place across frames (temporal heads), backgrounds repeat
(wide heads), and a cut breaks the link between the two halves.

Scenes are sampled in Python (:func:`sample_scene`) and rendered in batches with torch on
any device (:func:`render`), as ``(batch, 3, frames, height, width)`` in ``[-1, 1]``.
Held-out captions (:func:`heldout_captions`) use colour-shape pairs that training never
shows (:data:`HELDOUT_PAIRS`), so no evaluation prompt was seen in training or calibration.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

COLOURS = {
    "red": (0.95, 0.15, 0.15), "green": (0.15, 0.8, 0.25), "blue": (0.2, 0.35, 0.95),
    "yellow": (0.95, 0.85, 0.15), "white": (0.95, 0.95, 0.95), "purple": (0.6, 0.25, 0.8),
    "orange": (0.95, 0.55, 0.1), "cyan": (0.15, 0.85, 0.9),
}
SHAPES = ("circle", "square", "triangle", "ring")
SIZES = {"small": 0.09, "big": 0.16}  # half-size, as a fraction of the frame
MOTIONS = {  # frame widths travelled over the clip
    "moves left": (-0.5, 0.0), "moves right": (0.5, 0.0), "moves up": (0.0, -0.5), "moves down": (0.0, 0.5),
    "stays still": (0.0, 0.0),
}
BACKGROUNDS = ("stripes", "checkers", "dots", "waves", "plain")
BACKGROUND_COLOURS = {"grey": (0.45, 0.45, 0.45), "dark": (0.12, 0.12, 0.15), "brown": (0.45, 0.3, 0.18),
                      "teal": (0.1, 0.4, 0.4)}
CAMERAS = {  # background shift over the clip, frame widths
    "static camera": (0.0, 0.0), "camera pans left": (-0.6, 0.0), "camera pans right": (0.6, 0.0),
    "camera tilts up": (0.0, -0.6), "camera tilts down": (0.0, 0.6),
}
# Colour-shape pairs that training never draws: every held-out caption has one of them.
HELDOUT_PAIRS = frozenset({("yellow", "triangle"), ("blue", "ring"), ("orange", "square"), ("cyan", "circle")})
PUNCTUATION = (",",)


def vocabulary() -> list[str]:
    """Every word a caption can contain (the tokenizers' vocabulary)."""
    words = ["a", "and", "on", "then", "cut", "to", *PUNCTUATION]
    for phrase in [*COLOURS, *SHAPES, *SIZES, *MOTIONS, *BACKGROUNDS, *BACKGROUND_COLOURS, *CAMERAS]:
        words += phrase.split()
    return list(dict.fromkeys(words))


@dataclass
class Thing:
    colour: str
    shape: str
    size: str
    motion: str
    start: tuple[float, float]  # centre at the first frame, in [0, 1]^2

    def words(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {self.motion}"


@dataclass
class Shot:
    background: str
    background_colour: str
    camera: str
    things: list[Thing] = field(default_factory=list)
    phase: float = 0.0  # texture offset, so equal captions differ in detail

    def words(self) -> str:
        things = " and ".join(t.words() for t in self.things)
        return f"{things} on {self.background_colour} {self.background} , {self.camera}"


@dataclass
class Scene:
    shots: list[Shot]  # one, or two with a cut half-way

    @property
    def caption(self) -> str:
        return " , then cut to ".join(s.words() for s in self.shots)


def _sample_shot(rng: random.Random, heldout: bool, static: bool) -> Shot:
    things = []
    for i in range(rng.choice((1, 1, 2, 2, 3))):
        while True:
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if heldout and i == 0:
                colour, shape = rng.choice(sorted(HELDOUT_PAIRS))
            if heldout or (colour, shape) not in HELDOUT_PAIRS:
                break
        motion = "stays still" if static else rng.choice(list(MOTIONS))
        dx, dy = MOTIONS[motion]
        # start where the motion keeps the object mostly in frame
        x = rng.uniform(0.25, 0.75) - dx / 2
        y = rng.uniform(0.25, 0.75) - dy / 2
        things.append(Thing(colour, shape, rng.choice(list(SIZES)), motion, (x, y)))
    return Shot(
        background=rng.choice(BACKGROUNDS), background_colour=rng.choice(list(BACKGROUND_COLOURS)),
        camera="static camera" if static else rng.choice(list(CAMERAS)), things=things, phase=rng.random(),
    )


def sample_scene(rng: random.Random, *, heldout: bool = False, cut_probability: float = 0.1,
                 static_probability: float = 0.1) -> Scene:
    """A random scene; ``heldout`` puts a held-out colour-shape pair in it (training never does)."""
    static = rng.random() < static_probability
    shots = [_sample_shot(rng, heldout, static)]
    if rng.random() < cut_probability:
        shots.append(_sample_shot(rng, False, static))
    return Scene(shots)


def calibration_captions(count: int = 8, seed: int = 1) -> list[str]:
    """Captions from the training distribution, for calibration (none has a held-out pair)."""
    rng = random.Random(seed)
    return [sample_scene(rng, cut_probability=0.0, static_probability=0.0).caption for _ in range(count)]


def heldout_captions(count: int = 8, seed: int = 2) -> list[str]:
    """Captions training never saw: each has a colour-shape pair from :data:`HELDOUT_PAIRS`."""
    rng = random.Random(seed)
    return [sample_scene(rng, heldout=True, cut_probability=0.0, static_probability=0.0).caption
            for _ in range(count)]


# Rendering ------------------------------------------------------------------------------
def _background(kind: str, u: torch.Tensor, v: torch.Tensor, phase: float) -> torch.Tensor:
    """Texture in [0, 1] at background coordinates ``u, v`` (frame widths)."""
    two_pi = 2 * math.pi
    if kind == "stripes":
        return 0.5 + 0.5 * torch.sign(torch.sin(two_pi * (4 * u + phase)))
    if kind == "checkers":
        return 0.5 + 0.5 * torch.sign(torch.sin(two_pi * (3 * u + phase)) * torch.sin(two_pi * (3 * v + phase)))
    if kind == "dots":
        cu, cv = torch.frac(5 * u + phase) - 0.5, torch.frac(5 * v + phase) - 0.5
        return (cu * cu + cv * cv < 0.06).float()
    if kind == "waves":
        return 0.5 + 0.5 * torch.sin(two_pi * (2 * u + 0.5 * torch.sin(two_pi * (2 * v + phase))))
    return torch.zeros_like(u)  # plain


def _inside(shape: str, dx: torch.Tensor, dy: torch.Tensor, half: float) -> torch.Tensor:
    ax, ay = dx.abs(), dy.abs()
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (ax <= half * 0.85) & (ay <= half * 0.85)
    if shape == "triangle":  # apex up
        return (dy <= half * 0.8) & (dy >= -half) & (ax <= (dy + half) * 0.6)
    r2 = dx * dx + dy * dy  # ring
    return (r2 <= half * half) & (r2 >= (0.55 * half) ** 2)


def _render_shot(shot: Shot, t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(3, frames, height, width) in [0, 1]; ``t`` in [0, 1] per frame, ``x, y`` pixel centres in [0, 1]."""
    cam_x, cam_y = CAMERAS[shot.camera]
    u = x[None] + cam_x * t[:, None, None]
    v = y[None] + cam_y * t[:, None, None]
    texture = _background(shot.background, u, v, shot.phase)
    base = torch.tensor(BACKGROUND_COLOURS[shot.background_colour], device=t.device)
    light = torch.clamp(base + 0.35, max=1.0)
    video = base[:, None, None, None] + (light - base)[:, None, None, None] * texture[None]
    for thing in shot.things:
        mx, my = MOTIONS[thing.motion]
        cx = thing.start[0] + mx * t[:, None, None]
        cy = thing.start[1] + my * t[:, None, None]
        inside = _inside(thing.shape, x[None] - cx, y[None] - cy, SIZES[thing.size])
        colour = torch.tensor(COLOURS[thing.colour], device=t.device)[:, None, None, None]
        video = torch.where(inside[None], colour, video)
    return video


def render(scenes: list[Scene], frames: int, height: int, width: int, device="cpu") -> torch.Tensor:
    """The scenes as videos ``(batch, 3, frames, height, width)`` in [-1, 1] on ``device``."""
    t = torch.linspace(0, 1, frames, device=device)
    y, x = torch.meshgrid((torch.arange(height, device=device) + 0.5) / height,
                          (torch.arange(width, device=device) + 0.5) / width, indexing="ij")
    videos = []
    for scene in scenes:
        parts = [_render_shot(shot, t, x, y) for shot in scene.shots]
        video = parts[0]
        if len(parts) == 2:  # the cut: second shot from the middle frame on
            video = torch.cat([parts[0][:, : frames // 2], parts[1][:, frames // 2:]], dim=1)
        videos.append(video)
    return torch.stack(videos) * 2 - 1
