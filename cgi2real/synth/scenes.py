"""Procedural scenes of horses, people and both: articulated figures, scenery, camera, light.

Domain randomization: every image draws its own proportions, pose, coat/skin/clothing colours and
patterns, camera distance, angle and field of view, sun, sky, ground and clutter, so that a model
trained on them has to rely on the figures' shapes. Figures are built in their own frame (x
forward, y up, z to the left, metres, standing on y = 0) from ellipsoids and capsules, then
turned and placed. `render_scene` also reports what it drew, and it redraws the camera until every
figure the label promises is plainly visible.
"""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from cgi2real.synth.render import Camera, Material, Primitive, Scene, normalize, render

HORSE_COATS = [(0.42, 0.22, 0.1), (0.55, 0.27, 0.1), (0.1, 0.08, 0.07), (0.62, 0.6, 0.56), (0.85, 0.83, 0.78),
               (0.8, 0.62, 0.3), (0.62, 0.5, 0.33), (0.3, 0.2, 0.15)]  # bay, chestnut, black, grey, white, palomino, dun, brown
SKIN = [(0.96, 0.8, 0.69), (0.88, 0.67, 0.52), (0.72, 0.52, 0.38), (0.55, 0.37, 0.25), (0.36, 0.23, 0.15)]
HAIR = [(0.08, 0.06, 0.05), (0.3, 0.18, 0.1), (0.75, 0.6, 0.35), (0.6, 0.6, 0.6), (0.55, 0.22, 0.08)]
SKIES = [((0.75, 0.85, 0.95), (0.25, 0.45, 0.85)), ((0.75, 0.75, 0.78), (0.55, 0.57, 0.62)), ((0.95, 0.65, 0.4), (0.3, 0.3, 0.55))]
GROUNDS = [((0.3, 0.5, 0.2), (0.22, 0.38, 0.14)), ((0.65, 0.6, 0.35), (0.5, 0.45, 0.25)), ((0.8, 0.72, 0.55), (0.7, 0.6, 0.45)),
           ((0.4, 0.3, 0.2), (0.3, 0.22, 0.15)), ((0.92, 0.93, 0.95), (0.8, 0.82, 0.88))]  # grass, dry grass, sand, dirt, snow
HORSE_POSES = ("stand", "walk", "trot", "gallop", "graze")
HUMAN_POSES = ("stand", "walk", "wave", "point")
SUPERSAMPLE = 2  # rays per pixel side; the image is box-filtered down (anti-aliasing)


def _colour(rng: np.random.Generator, palette, randomize: float = 0.2) -> tuple:
    """A palette colour with a little variation, or (with probability `randomize`) any colour."""
    if rng.random() < randomize:
        return tuple(rng.uniform(0.05, 0.95, 3))
    base = np.asarray(palette[rng.integers(len(palette))])
    return tuple((base * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3)).clip(0, 1))


def _direction(angle: float, spread: float = 0.0) -> np.ndarray:
    """A unit vector `angle` radians forward of straight down, tilted `spread` radians sideways (+z)."""
    return np.array([math.sin(angle), -math.cos(angle) * math.cos(spread), math.cos(angle) * math.sin(spread)])


class Body:
    """Primitives of one figure in its own frame, with named materials."""

    def __init__(self, scene: Scene, figure: int):
        self.scene, self.figure, self.parts, self.materials = scene, figure, [], {}

    def material(self, name: str, material: Material) -> None:
        self.materials[name] = self.scene.add_material(material)

    def capsule(self, a, b, radius: float, material: str) -> None:
        self.parts.append(Primitive("capsule", self.materials[material], self.figure, a=np.asarray(a, float), b=np.asarray(b, float), radius=radius))

    def ellipsoid(self, center, radii, material: str, axis=None) -> None:
        """An ellipsoid whose first radius lies along `axis` (default: x)."""
        x = normalize(np.asarray(axis if axis is not None else (1.0, 0, 0), float))
        helper = np.array([0.0, 0, 1]) if abs(x[2]) < 0.9 else np.array([0.0, 1, 0])
        y = normalize(np.cross(helper, x))
        rotation = np.stack([x, y, np.cross(x, y)], axis=1)
        self.parts.append(Primitive("ellipsoid", self.materials[material], self.figure, center=np.asarray(center, float), rotation=rotation, radii=np.asarray(radii, float)))

    def limb(self, start, angles, lengths, radii, materials, spread: float = 0.0) -> np.ndarray:
        """A chain of capsules from `start`; returns the end point."""
        point = np.asarray(start, float)
        for angle, length, radius, material in zip(angles, lengths, radii, materials):
            end = point + length * _direction(angle, spread)
            self.capsule(point, end, radius, material)
            point = end
        return point

    def place(self, position, yaw: float, scale: float = 1.0) -> list[Primitive]:
        """The primitives scaled, turned `yaw` radians about the vertical axis and moved to `position`."""
        c, s = math.cos(yaw), math.sin(yaw)
        turn = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        move = lambda p: turn @ (p * scale) + np.asarray(position, float)  # noqa: E731
        placed = []
        for p in self.parts:
            if p.kind == "capsule":
                placed.append(Primitive("capsule", p.material, p.figure, a=move(p.a), b=move(p.b), radius=p.radius * scale))
            else:
                placed.append(Primitive("ellipsoid", p.material, p.figure, center=move(p.center), rotation=turn @ p.rotation, radii=p.radii * scale))
        return placed

    def lowest(self) -> float:
        """The lowest point of the figure (to stand it on the ground)."""
        lows = [min(p.a[1], p.b[1]) - p.radius if p.kind == "capsule" else p.center[1] - p.radii.max() for p in self.parts]
        return min(lows)


def build_horse(scene: Scene, figure: int, rng: np.random.Generator, pose: str) -> Body:
    """A horse: barrel, chest and rump, four jointed legs with hooves, neck with mane, head with ears and muzzle, tail."""
    body = Body(scene, figure)
    coat = _colour(rng, HORSE_COATS)
    pinto = rng.random() < 0.2
    body.material("coat", Material(coat, "patches" if pinto else "solid", (0.93, 0.92, 0.9), rng.uniform(1.5, 4), 0.15))
    body.material("hair", Material(_colour(rng, [(0.05, 0.04, 0.04), tuple(np.asarray(coat) * 0.5), (0.85, 0.8, 0.65)], 0.1)))
    body.material("hoof", Material((0.12, 0.11, 0.1), shine=0.2))
    body.material("sock", Material((0.93, 0.92, 0.9)))  # white lower legs, on some horses
    body.material("eye", Material((0.03, 0.03, 0.03), shine=0.6))
    length, legs, neck = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)

    body.ellipsoid((0, 1.35, 0), (0.72 * length, 0.33, 0.29), "coat")  # barrel
    body.ellipsoid((0.5 * length, 1.38, 0), (0.33, 0.37, 0.27), "coat")  # chest
    body.ellipsoid((-0.5 * length, 1.42, 0), (0.36, 0.37, 0.29), "coat")  # rump

    # Neck and head: the neck rises at `lift`; the head hangs down from its end.
    lift = math.radians(rng.uniform(-55, -35) if pose == "graze" else rng.uniform(35, 70))
    base = np.array([0.62 * length, 1.55, 0])
    along = np.array([math.cos(lift), math.sin(lift), 0])
    up = np.array([-math.sin(lift), math.cos(lift), 0])
    poll = base + 0.75 * neck * along
    body.capsule(base, base + 0.45 * neck * along, 0.18, "coat")
    body.capsule(base + 0.4 * neck * along, poll, 0.12, "coat")
    body.capsule(base + 0.12 * up, poll + 0.08 * up, 0.05, "hair")  # mane
    head_angle = lift - math.radians(rng.uniform(100, 125))
    head_dir = np.array([math.cos(head_angle), math.sin(head_angle), 0])
    muzzle = poll + 0.5 * head_dir
    body.ellipsoid(poll + 0.08 * head_dir, (0.15, 0.12, 0.1), "coat", head_dir)  # cheek
    body.capsule(poll + 0.1 * head_dir, muzzle, 0.085, "coat")
    body.ellipsoid(muzzle, (0.1, 0.09, 0.085), "coat", head_dir)
    for side in (-1, 1):
        ear = poll - 0.02 * head_dir + np.array([0, 0, 0.055 * side])
        body.capsule(ear, ear + 0.13 * normalize(along + 0.6 * up - 0.3 * head_dir), 0.028, "coat")
        body.ellipsoid(poll + 0.17 * head_dir + np.array([0, 0.03, 0.085 * side]), (0.028, 0.028, 0.02), "eye")

    # Tail: two segments from the rump, the second hanging lower.
    root = np.array([-0.86 * length, 1.55, 0])
    bend = rng.uniform(0.15, 0.6) if pose != "gallop" else rng.uniform(0.9, 1.3)
    mid = body.limb(root, [-bend - 0.3], [0.3], [0.055], ["hair"])
    body.limb(mid, [-bend * 0.5], [0.45], [0.075], ["hair"])

    # Legs: a gait phase per leg; a flexed leg swings forward with its lower joints folded.
    amplitude = {"stand": 0.05, "graze": 0.05, "walk": 0.25, "trot": 0.38, "gallop": 0.6}[pose]
    offsets = {"walk": (0, 0.5, 0.75, 0.25), "trot": (0, 0.5, 0.5, 0), "gallop": (0, 0.1, 0.5, 0.6)}.get(pose, tuple(rng.uniform(0, 1, 4)))
    phase = rng.uniform(0, 1)
    socks = rng.random() < 0.25
    sock = [socks and rng.random() < 0.6 for _ in range(4)]
    tops = [(0.5 * length, 1.15, 0.15), (0.5 * length, 1.15, -0.15), (-0.55 * length, 1.25, 0.16), (-0.55 * length, 1.25, -0.16)]
    for i, (top, offset) in enumerate(zip(tops, offsets)):
        cycle = 2 * math.pi * (phase + offset)
        swing = amplitude * math.sin(cycle) + rng.normal(0, 0.03)
        flex = max(0.0, math.cos(cycle)) * amplitude * 2.2
        lower = "sock" if sock[i] else "coat"
        if i < 2:  # front: forearm, cannon, pastern
            end = body.limb(top, [swing, swing - flex * 1.3, swing - flex * 0.7 + 0.3], [0.5 * legs, 0.4 * legs, 0.16], [0.085, 0.05, 0.045], ["coat", lower, lower])
        else:  # hind: thigh, gaskin, cannon, pastern (the hock points back)
            end = body.limb(top, [swing + 0.3, swing - 0.55, swing - flex * 1.1, swing - flex + 0.3], [0.4, 0.4 * legs, 0.34 * legs, 0.15], [0.12, 0.075, 0.05, 0.045], ["coat", "coat", lower, lower])
        body.ellipsoid(end + np.array([0.02, -0.02, 0]), (0.075, 0.055, 0.065), "hoof")
    return body


def build_human(scene: Scene, figure: int, rng: np.random.Generator, pose: str) -> Body:
    """A person: head with hair and nose, neck, torso, pelvis, jointed arms with hands, jointed legs with feet."""
    body = Body(scene, figure)
    body.material("skin", Material(_colour(rng, SKIN, 0.1), shine=0.1))
    body.material("hair", Material(_colour(rng, HAIR, 0.1)))
    body.material("shirt", Material(tuple(rng.uniform(0.05, 0.95, 3)), "stripes" if rng.random() < 0.2 else "solid", tuple(rng.uniform(0.05, 0.95, 3)), rng.uniform(4, 10)))
    body.material("trousers", Material(_colour(rng, [(0.15, 0.2, 0.4), (0.1, 0.1, 0.1), (0.6, 0.55, 0.4), (0.3, 0.25, 0.2)], 0.3)))
    body.material("shoes", Material(_colour(rng, [(0.1, 0.08, 0.07), (0.35, 0.2, 0.1), (0.9, 0.9, 0.9)], 0.1), shine=0.3))
    seated = pose == "ride"

    body.ellipsoid((0, 0.95, 0), (0.12, 0.11, 0.17), "trousers")  # pelvis
    body.ellipsoid((0, 1.2, 0), (0.12, 0.24, 0.18), "shirt")  # belly
    body.ellipsoid((0.01, 1.35, 0), (0.13, 0.13, 0.2), "shirt")  # chest
    body.capsule((0, 1.45, 0), (0.01, 1.55, 0), 0.05, "skin")
    body.ellipsoid((0.01, 1.65, 0), (0.1, 0.12, 0.09), "skin")  # head
    body.ellipsoid((-0.015, 1.69, 0), (0.105, 0.1, 0.095), "hair")
    body.ellipsoid((0.105, 1.64, 0), (0.025, 0.03, 0.02), "skin")  # nose

    walk = rng.uniform(0, 2 * math.pi)
    for side in (-1, 1):
        # Arms: upper arm, forearm, hand.
        if pose == "walk":
            arm, elbow = 0.35 * math.sin(walk + math.pi * (side > 0)), 0.3
        elif pose == "wave" and side > 0:
            arm, elbow = rng.uniform(2.4, 2.9), rng.uniform(-0.3, 0.3)
        elif (pose == "point" and side > 0) or (pose == "lead" and side < 0):
            arm, elbow = rng.uniform(1.0, 1.5), rng.uniform(0, 0.3)
        elif seated:
            arm, elbow = rng.uniform(0.2, 0.5), rng.uniform(0.8, 1.2)  # holding the reins
        else:
            arm, elbow = rng.uniform(-0.15, 0.2), rng.uniform(0, 0.4)
        hand = body.limb((0, 1.42, 0.2 * side), [arm, arm + elbow], [0.29, 0.27], [0.05, 0.042], ["shirt", "skin"], spread=side * rng.uniform(0.05, 0.25))
        body.ellipsoid(hand + 0.04 * _direction(arm + elbow), (0.06, 0.045, 0.03), "skin", _direction(arm + elbow))
        # Legs: thigh, shin, foot. Seated riders straddle: thighs forward and apart.
        if seated:
            hip, knee, spread = rng.uniform(1.2, 1.5), rng.uniform(1.2, 1.6), side * rng.uniform(0.45, 0.6)
        elif pose == "walk":
            hip = 0.35 * math.sin(walk + math.pi * (side < 0))
            knee, spread = max(0.0, math.cos(walk + math.pi * (side < 0))) * 0.6, side * 0.04
        else:
            hip, knee, spread = rng.uniform(-0.08, 0.08), rng.uniform(0, 0.1), side * rng.uniform(0.02, 0.12)
        ankle = body.limb((0, 0.92, 0.09 * side), [hip, hip - knee], [0.44, 0.43], [0.075, 0.055], ["trousers", "trousers"], spread=spread)
        body.ellipsoid(ankle + np.array([0.06, -0.03, 0]), (0.12, 0.045, 0.05), "shoes")
    return body


def _palette_scene(rng: np.random.Generator) -> Scene:
    sky = SKIES[rng.integers(len(SKIES))] if rng.random() > 0.15 else (tuple(rng.uniform(0.3, 1, 3)), tuple(rng.uniform(0.1, 0.9, 3)))
    ground = GROUNDS[rng.integers(len(GROUNDS))] if rng.random() > 0.15 else (tuple(rng.uniform(0.1, 0.9, 3)), tuple(rng.uniform(0.1, 0.9, 3)))
    elevation, azimuth = rng.uniform(0.35, 1.3), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(elevation) * math.cos(azimuth), math.sin(elevation), math.cos(elevation) * math.sin(azimuth)])
    return Scene(sun=sun, sky=sky, ground=ground, ground_scale=rng.uniform(0.15, 0.8), haze=rng.uniform(0.002, 0.03), noise=rng.normal(size=(4, 4)))


def _add_clutter(scene: Scene, rng: np.random.Generator, center: np.ndarray, clear: float, count: int, toward: float | None = None) -> None:
    """Trees, rocks, bushes and fences around `center`, none closer than `clear` metres to it.

    With `toward` (an angle on the ground), they stand in that direction, `clear` metres away.
    """
    for _ in range(count):
        if toward is None:
            angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(clear, clear + 25)
        else:
            angle, distance = toward + rng.normal(0, 0.15), clear
        spot = center + distance * np.array([math.cos(angle), 0, math.sin(angle)])
        spot[1] = 0
        body = Body(scene, -1)
        kind = str(rng.choice(["tree", "rock", "bush", "fence"]))
        if kind == "tree":
            body.material("bark", Material(_colour(rng, [(0.3, 0.2, 0.12)], 0.1)))
            body.material("leaves", Material(_colour(rng, [(0.15, 0.4, 0.12), (0.6, 0.4, 0.1), (0.25, 0.35, 0.15)], 0.15), "patches", _colour(rng, [(0.1, 0.3, 0.08)]), 2.0))
            height = rng.uniform(2, 6)
            body.capsule((0, 0, 0), (0, height, 0), rng.uniform(0.1, 0.3), "bark")
            body.ellipsoid((0, height + 0.5, 0), rng.uniform(0.8, 2.5, 3) * [1, 1.2, 1], "leaves")
        elif kind in ("rock", "bush"):
            body.material("m", Material(_colour(rng, [(0.5, 0.5, 0.48)] if kind == "rock" else [(0.2, 0.4, 0.15)], 0.2), "patches", _colour(rng, [(0.4, 0.4, 0.38)]), 3.0))
            radii = rng.uniform(0.3, 1.2, 3) * ([1, 0.6, 1] if kind == "rock" else [1, 0.8, 1])
            body.ellipsoid((0, radii[1] * 0.6, 0), radii, "m")
        else:
            body.material("wood", Material(_colour(rng, [(0.55, 0.42, 0.3), (0.9, 0.9, 0.88)], 0.2)))
            posts = rng.integers(2, 5)
            for k in range(posts):
                body.capsule((k * 2.0, 0, 0), (k * 2.0, 1.2, 0), 0.06, "wood")
            for height in (0.6, 1.1):
                body.capsule((0, height, 0), ((posts - 1) * 2.0, height, 0), 0.04, "wood")
        scene.primitives += body.place(spot, rng.uniform(0, 2 * math.pi))


def compose(label: str, rng: np.random.Generator) -> tuple[Scene, np.ndarray, float]:
    """The figures for `label` placed in a fresh scene; returns (scene, their centre, their radius)."""
    scene = _palette_scene(rng)
    placements = []  # (body, position, yaw, scale)

    def add(kind: str, pose: str, position, yaw: float, scale: float, on_ground: bool = True, **info):
        figure = len(scene.figures)
        body = (build_horse if kind == "horse" else build_human)(scene, figure, rng, pose)
        position = np.array(position, float)
        if on_ground:
            position[1] = -body.lowest() * scale
        scene.figures.append({"kind": kind, "pose": pose, **info})
        placements.append((body, position, yaw, scale))

    yaw = rng.uniform(0, 2 * math.pi)
    if label == "horse":
        for k in range(1 if rng.random() < 0.8 else 2):
            add("horse", str(rng.choice(HORSE_POSES)), (k * rng.uniform(1.5, 3), 0, k * rng.uniform(-3, 3)), yaw + k * rng.normal(0, 0.8), rng.uniform(0.85, 1.15))
    elif label == "human":
        for k in range(1 if rng.random() < 0.75 else 2):
            add("human", str(rng.choice(HUMAN_POSES)), (0, 0, k * rng.uniform(0.7, 1.5)), yaw + rng.normal(0, 0.5), rng.uniform(0.75, 1.1))
    else:
        relation = str(rng.choice(["riding", "riding", "leading", "beside"]))
        horse_scale = rng.uniform(0.9, 1.15)
        add("horse", str(rng.choice(["stand", "walk", "trot"] if relation != "beside" else HORSE_POSES)), (0, 0, 0), yaw, horse_scale, relation=relation)
        turn = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
        horse_at = placements[0][1]  # lifted so that its hooves touch the ground
        side = int(rng.choice([-1, 1]))
        if relation == "riding":
            saddle = Body(scene, 0)
            saddle.material("leather", Material(_colour(rng, [(0.35, 0.2, 0.1), (0.1, 0.08, 0.06)], 0.1), shine=0.3))
            saddle.ellipsoid((0.05, 1.68, 0), (0.28, 0.07, 0.31), "leather")
            scene.primitives += saddle.place(horse_at, yaw, horse_scale)
            rider_scale = rng.uniform(0.85, 1.0)
            seat = horse_at + turn @ (np.array([0.05, 1.74, 0]) * horse_scale)
            add("human", "ride", seat - np.array([0, 0.86 * rider_scale, 0]), yaw, rider_scale, on_ground=False, relation=relation)
        elif relation == "leading":
            add("human", "lead", turn @ np.array([rng.uniform(1.0, 1.4), 0, side * rng.uniform(0.5, 0.7)]), yaw, rng.uniform(0.8, 1.05), relation=relation)
        else:
            add("human", str(rng.choice(["stand", "wave", "point"])), turn @ np.array([rng.uniform(-0.7, 0.5), 0, side * rng.uniform(0.7, 1.1)]), rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.05), relation=relation)

    points = []
    for body, position, turn_yaw, scale in placements:
        placed = body.place(position, turn_yaw, scale)
        scene.primitives += placed
        points += [p.bounding_sphere()[0] for p in placed]
    points = np.array(points)
    center = (points.min(0) + points.max(0)) / 2
    return scene, center, float(np.linalg.norm(points.max(0) - points.min(0)) / 2 + 0.3)


# Least share of the image each figure must cover, so that the label is true to a viewer.
MIN_SHARE = {"horse": 0.03, "human": 0.008}


class Rendering(NamedTuple):
    image: Image.Image  # RGB, size x size
    mask: Image.Image  # L, 255 where a figure (horse or person) covers the pixel, soft at the edges
    info: dict  # what the image shows: label, seed, figures (kind, pose, share), camera, visible


def render_scene(label: str, seed: int, size: int = 299, max_attempts: int = 12) -> Rendering:
    """One image of `label`, its figure mask and what it shows; the same (label, seed, size) always gives the same.

    The figures are drawn once; the camera (and the clutter) is redrawn until every figure covers
    at least MIN_SHARE of the image, which also bounds how much cropping and occlusion can hide.
    """
    rng = np.random.default_rng([seed, ("horse", "human", "both").index(label)])
    scene, center, radius = compose(label, rng)
    figure_count = len(scene.primitives)
    best = None
    for attempt in range(max_attempts):
        del scene.primitives[figure_count:]
        _add_clutter(scene, rng, center, clear=radius + 2, count=int(rng.integers(1, 7)))
        fov = rng.uniform(25, 55)
        zoom = rng.uniform(0.75, 1.5) if attempt < max_attempts // 2 else rng.uniform(1.0, 1.3)  # < 1 crops
        distance = radius / math.sin(math.radians(fov) / 2) * zoom
        elevation, azimuth = rng.uniform(-0.05, 0.55), rng.uniform(0, 2 * math.pi)
        eye = center + distance * np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)])
        eye[1] = max(eye[1], 0.4)
        if rng.random() < 0.25:  # an occluder between the camera and the figures
            across = distance * math.cos(elevation)
            _add_clutter(scene, rng, center, clear=across * rng.uniform(0.3, 0.6), count=1, toward=math.atan2(math.cos(azimuth), math.sin(azimuth)))
        target = center + rng.normal(0, radius * 0.15, 3)
        camera = Camera.look_at(eye, target, fov, size * SUPERSAMPLE)
        pixels, figure_ids = render(scene, camera)
        shares = [float((figure_ids == i).mean()) for i in range(len(scene.figures))]
        score = min(s / MIN_SHARE[f["kind"]] for s, f in zip(shares, scene.figures))
        if best is None or score > best[0]:
            best = (score, pixels, figure_ids, shares, attempt, fov, distance)
        if score >= 1:
            break
    score, pixels, figure_ids, shares, attempt, fov, distance = best
    image = Image.fromarray((pixels * 255).round().astype(np.uint8)).reduce(SUPERSAMPLE)
    mask = Image.fromarray(np.where(figure_ids >= 0, 255, 0).astype(np.uint8)).reduce(SUPERSAMPLE)
    figures = [{**f, "share": round(s, 4)} for f, s in zip(scene.figures, shares)]
    info = {"label": label, "seed": seed, "figures": figures, "attempts": attempt + 1, "fov": round(fov, 1), "distance": round(distance, 2), "visible": score >= 1}
    return Rendering(image, mask, info)
