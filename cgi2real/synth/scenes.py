"""Procedural scenes of horses, people and both, framed the way photographs frame them.

Domain randomization: every image draws its own figures (proportions, pose, coat, skin, clothes),
a backdrop (fields, parks, paddocks, streets, building fronts, rooms, stables; drawn the same way
for every class, so that no backdrop gives the class away), other animals that are not horses
(as often in every class), light, and a camera. The camera model picks a photographer's framing
first (a wide shot, the whole figure, three-quarter, waist-up or head-and-shoulders for people,
a head or the front half for horses, a rider filling the frame) and then places itself so that the
framed part fills the frame; figures may be cut by the frame, as in photos. `render_scene`
reports what it drew and redraws the camera until every figure the label promises is visible.
"""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from cgi2real.synth.figures import HARD_NEGATIVES, HORSE_POSES, HUMAN_POSES, SPECIES_SCALE, Body, build_human, build_quadruped, colour, yaw_rotation
from cgi2real.synth.render import Camera, Material, Scene, depth_of_field, normalize, render, trace

SKIES = [((0.75, 0.85, 0.95), (0.25, 0.45, 0.85)), ((0.75, 0.75, 0.78), (0.55, 0.57, 0.62)), ((0.95, 0.65, 0.4), (0.3, 0.3, 0.55))]
GROUNDS = {
    "open": [((0.3, 0.5, 0.2), (0.22, 0.38, 0.14)), ((0.65, 0.6, 0.35), (0.5, 0.45, 0.25)), ((0.8, 0.72, 0.55), (0.7, 0.6, 0.45)),
             ((0.4, 0.3, 0.2), (0.3, 0.22, 0.15)), ((0.92, 0.93, 0.95), (0.8, 0.82, 0.88))],  # grass, dry grass, sand, dirt, snow
    "street": [((0.3, 0.3, 0.32), (0.22, 0.22, 0.24)), ((0.45, 0.43, 0.4), (0.35, 0.34, 0.32))],  # asphalt, worn asphalt
    "paving": [((0.6, 0.58, 0.55), (0.5, 0.48, 0.46)), ((0.55, 0.4, 0.32), (0.45, 0.33, 0.27)), ((0.7, 0.7, 0.7), (0.6, 0.6, 0.62))],
    "floor": [((0.55, 0.38, 0.22), (0.45, 0.3, 0.17)), ((0.75, 0.72, 0.68), (0.6, 0.58, 0.55)), ((0.35, 0.25, 0.18), (0.28, 0.2, 0.14))],
    "straw": [((0.8, 0.68, 0.4), (0.65, 0.52, 0.3)), ((0.5, 0.4, 0.28), (0.4, 0.32, 0.22))],
}
WALLS = [(0.85, 0.82, 0.75), (0.75, 0.65, 0.5), (0.6, 0.3, 0.22), (0.55, 0.55, 0.58), (0.9, 0.9, 0.88), (0.45, 0.5, 0.55), (0.7, 0.55, 0.45)]
# Backdrops and their probabilities: the same for every class (a test holds it).
BACKDROPS = {"field": 0.2, "park": 0.1, "paddock": 0.1, "street": 0.2, "building": 0.15, "room": 0.13, "stable": 0.12}
# Framings per class: (probability, what the frame is fitted to, how much of the frame it fills).
FRAMINGS = {
    "human": {"wide": (0.25, "all", (0.3, 0.55)), "full": (0.45, "person", (0.7, 1.0)), "three_quarter": (0.15, "to_knees", (0.85, 1.05)),
              "waist_up": (0.1, "to_waist", (0.85, 1.1)), "head_shoulders": (0.05, "to_chest", (0.85, 1.1))},
    "horse": {"wide": (0.25, "all", (0.25, 0.5)), "full": (0.6, "horse", (0.7, 1.0)), "front": (0.1, "horse_front", (0.85, 1.1)),
              "head": (0.05, "horse_head", (0.8, 1.1))},
    "both": {"wide": (0.3, "all", (0.25, 0.5)), "full": (0.6, "pair", (0.7, 1.0)), "close": (0.1, "rider", (0.85, 1.1))},
}
CLOSE_FRAMINGS = {"three_quarter", "waist_up", "head_shoulders", "front", "head", "close"}  # a lens blurs the background
RANDOMIZED_SHARE = 0.2  # images whose every surface takes random colours and patterns (`randomize_materials`)
HARD_NEGATIVE_PROB = 0.25  # images with another animal (not a horse) in them; the same for every class
# "photo": framed and furnished as photographs are (the default, for training). "simple": one
# horse, one person or one rider, whole, seen from the side and filling most of the frame, in an
# open field with nothing else in it: an easy set that a model from scratch learns in minutes (the
# demo's), not one to train for photographs on.
SCENE_STYLES = ("photo", "simple")
# Least share of the image each figure must cover, so that the label is true to a viewer.
MIN_SHARE = {"horse": 0.03, "human": 0.008}


class Figure(NamedTuple):
    kind: str  # horse | human
    marks: dict  # named points in the world (head top, waist, muzzle, hooves, ...)


def _light_and_ground(rng: np.random.Generator, backdrop: str) -> Scene:
    """A scene with a sun, a sky and a ground that suit the backdrop (a random colour sometimes)."""
    ground_kind, pattern = {"street": ("street", "asphalt"), "building": ("paving", "tiles"), "room": ("floor", str(rng.choice(["planks", "tiles"]))),
                            "stable": ("straw", "noise")}.get(backdrop, ("open", "noise"))
    palette = GROUNDS[ground_kind]
    ground = palette[rng.integers(len(palette))] if rng.random() > 0.1 else (tuple(rng.uniform(0.1, 0.9, 3)), tuple(rng.uniform(0.1, 0.9, 3)))
    sky = SKIES[rng.integers(len(SKIES))] if rng.random() > 0.15 else (tuple(rng.uniform(0.3, 1, 3)), tuple(rng.uniform(0.1, 0.9, 3)))
    elevation, azimuth = rng.uniform(0.35, 1.3), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(elevation) * math.cos(azimuth), math.sin(elevation), math.cos(elevation) * math.sin(azimuth)])
    indoor = backdrop in ("room", "stable")
    return Scene(sun=sun, sky=sky, ground=ground, ground_scale=rng.uniform(0.15, 0.8) if not indoor else rng.uniform(0.5, 2), ground_pattern=pattern,
                 haze=rng.uniform(0.002, 0.03) if not indoor else 0.0, noise=rng.normal(size=(4, 4)), grain=rng.normal(size=(8, 4)))


def compose(label: str, rng: np.random.Generator, scene: Scene, simple: bool = False, yaw: float | None = None) -> list[Figure]:
    """Build and place the figures for `label` in `scene`; returns them with their marks in the world.

    `simple`: one horse, one person, or a person riding a horse, never more.
    `yaw`: the heading of the (first) figure; None draws one.
    """
    figures = []

    def add(kind: str, pose: str, position, yaw: float, scale: float, on_ground: bool = True, **info):
        number = len(scene.figures)
        body = build_quadruped(scene, number, rng, pose) if kind == "horse" else build_human(scene, number, rng, pose)
        position = np.array(position, float)
        if on_ground:
            position[1] = -body.lowest() * scale
        scene.figures.append({"kind": kind, "pose": pose, **info})
        scene.primitives += body.place(position, yaw, scale)
        figures.append(Figure(kind, body.placed_marks(position, yaw, scale)))
        return position

    yaw = rng.uniform(0, 2 * math.pi) if yaw is None else yaw
    if label == "horse":
        # Alone, or a herd of two to four (a mare and her foal, a paddock's horses), as photographed:
        # several figures must not mean `both`.
        count = 1 if simple else int(rng.choice([1, 2, 3, 4], p=[0.55, 0.25, 0.12, 0.08]))
        for k in range(count):
            spot = (k * rng.uniform(-3, 3), 0, k * rng.uniform(0.9, 3) * rng.choice([-1, 1]))  # side by side, or behind
            scale = rng.uniform(0.55, 0.7) if k > 0 and rng.random() < 0.25 else rng.uniform(0.85, 1.15)  # a foal
            add("horse", str(rng.choice(HORSE_POSES)), spot, yaw + k * rng.normal(0, 0.8), scale)
    elif label == "human":
        count = 1 if simple else int(rng.choice([1, 1, 1, 1, 2, 2, 3, 4]))  # alone, a pair, a group
        walking = rng.random() < 0.4  # pedestrians: all walking the same way
        for k in range(count):
            pose = "walk" if walking else str(rng.choice(HUMAN_POSES))
            spot = (rng.normal(0, 0.6) * (k > 0) - (1.2 * k if walking else 0), 0, k * rng.uniform(0.6, 1.2) * (-1) ** k)
            add("human", pose, spot, yaw + rng.normal(0, 0.1 if walking else 0.5), rng.uniform(0.75, 1.1))
    else:  # a person riding, leading or beside a horse; out riding, sometimes in a group of riders
        turn = yaw_rotation(yaw)
        pairs = 1 if simple or rng.random() < 0.75 else int(rng.choice([2, 2, 3]))
        for k in range(pairs):
            relation = "riding" if simple or k > 0 else str(rng.choice(["riding"] * 5 + ["leading", "beside"]))
            origin = turn @ np.array([-k * rng.uniform(2.5, 4), 0, k * rng.uniform(1.2, 2.5) * rng.choice([-1, 1])])
            _add_pair(add, scene, rng, relation, origin, yaw + k * rng.normal(0, 0.2))
    return figures


def _add_pair(add, scene: Scene, rng: np.random.Generator, relation: str, origin: np.ndarray, yaw: float) -> None:
    """A horse at `origin` heading `yaw`, and a person riding it (in a saddle), leading it or beside it."""
    horse_scale = rng.uniform(0.9, 1.15)
    horse_at = add("horse", str(rng.choice(["stand", "walk", "trot"] if relation != "beside" else HORSE_POSES)), origin, yaw, horse_scale, relation=relation)
    turn = yaw_rotation(yaw)
    side = int(rng.choice([-1, 1]))
    if relation == "riding":
        saddle = Body(scene, len(scene.figures) - 1)  # part of the horse just added
        saddle.material("leather", Material(colour(rng, [(0.35, 0.2, 0.1), (0.1, 0.08, 0.06)], 0.1), shine=0.3))
        saddle.material("pad", Material(colour(rng, [(0.9, 0.9, 0.88), (0.15, 0.2, 0.45), (0.5, 0.1, 0.1)], 0.3)))
        saddle.ellipsoid((0.05, 1.64, 0), (0.38, 0.05, 0.34), "pad")
        saddle.ellipsoid((0.05, 1.68, 0), (0.28, 0.07, 0.31), "leather")
        scene.primitives += saddle.place(horse_at, yaw, horse_scale)
        rider_scale = rng.uniform(0.85, 1.0)
        seat = horse_at + turn @ (np.array([0.05, 1.74, 0]) * horse_scale)
        add("human", "ride", seat - np.array([0, 0.86 * rider_scale, 0]), yaw, rider_scale, on_ground=False, relation=relation)
    elif relation == "leading":
        add("human", "lead", origin + turn @ np.array([rng.uniform(1.0, 1.4), 0, side * rng.uniform(0.5, 0.7)]), yaw, rng.uniform(0.8, 1.05), relation=relation)
    else:
        spot = origin + turn @ np.array([rng.uniform(-0.7, 0.5), 0, side * rng.uniform(0.7, 1.1)])
        add("human", str(rng.choice(["stand", "wave", "point"])), spot, rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.05), relation=relation)


def _framed_points(fit: str, figures: list[Figure]) -> np.ndarray:
    """The world points a framing fits into the frame (N, 3)."""
    person = next((f for f in figures if f.kind == "human"), None)
    horse = next((f for f in figures if f.kind == "horse"), None)

    def marks(figure, *prefixes):
        return [p for name, p in figure.marks.items() if not prefixes or name.startswith(prefixes)]

    if fit == "all":
        return np.array([p for f in figures for p in marks(f)])
    if fit in ("person", "horse"):
        return np.array(marks(person if fit == "person" else horse))
    if fit == "pair":
        return np.array(marks(horse) + marks(person))
    if fit in ("to_knees", "to_waist", "to_chest"):
        low = {"to_knees": ("knee",), "to_waist": ("waist",), "to_chest": ("chest",)}[fit]
        return np.array(marks(person, "top", "shoulder", *low))
    if fit == "horse_front":
        return np.array(marks(horse, "ears", "muzzle", "withers", "hoof0", "hoof1", "neck"))
    if fit == "horse_head":
        return np.array(marks(horse, "ears", "muzzle", "poll", "neck"))
    assert fit == "rider", fit
    if person.marks["top"][1] > horse.marks["withers"][1] + 0.5:  # mounted: the rider to the knees and the horse's head
        return np.array(marks(person, "top", "knee", "shoulder") + marks(horse, "ears", "muzzle", "neck"))
    return np.array(marks(person, "top", "waist") + marks(horse, "ears", "muzzle"))


def frame_camera(points: np.ndarray, fill: float, rng: np.random.Generator, size: int, side_of: float | None = None) -> tuple[Camera, float]:
    """A camera from which `points` span `fill` of the frame (its larger side); returns it and its distance.

    `side_of`: a figure's yaw, to look at it from one side or the other (within 35 degrees)
    instead of from anywhere around it.

    A pinhole projects a length L at distance d to L * focal / d pixels, so two corrections of
    the distance by the measured span land on the target (the first guess ignores perspective).
    """
    center = (points.min(0) + points.max(0)) / 2
    extent = float(np.ptp(points, 0).max()) + 0.1
    fov = rng.uniform(25, 55)
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(-0.1, 0.35)
    if side_of is not None:
        azimuth = side_of + math.pi * float(rng.integers(2)) + rng.uniform(-0.6, 0.6)
    toward = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation), math.cos(elevation) * math.cos(azimuth)])
    target = center + rng.normal(0, 0.06 * extent, 3)  # photographers do not always centre
    distance = extent / (2 * math.tan(math.radians(fov) / 2) * fill)
    for _ in range(2):
        eye = target + distance * toward
        eye[1] = max(eye[1], 0.3)
        camera = Camera.look_at(eye, target, fov, size)
        local = (points - camera.position) @ camera.rotation
        depth = np.maximum(-local[:, 2], 0.05)
        span = max(np.ptp(local[:, 0] / depth), np.ptp(local[:, 1] / depth)) * camera.focal / size
        distance *= span / fill
    eye = target + distance * toward
    eye[1] = max(eye[1], 0.3)
    return Camera.look_at(eye, target, fov, size), float(np.linalg.norm(eye - center))


def _wall_material(rng: np.random.Generator, along: np.ndarray, pattern: str | None = None) -> Material:
    pattern = pattern or str(rng.choice(["solid", "bricks", "windows", "windows", "planks"]))
    glass = colour(rng, [(0.15, 0.18, 0.22), (0.35, 0.45, 0.55), (0.1, 0.1, 0.1)], 0.0)
    mortar = colour(rng, [(0.8, 0.78, 0.72), (0.4, 0.38, 0.35)], 0.0)
    return Material(colour(rng, WALLS, 0.2), pattern, glass if pattern == "windows" else mortar, rng.uniform(3, 8), 0.05, grain=0.08, across=tuple(along))


def add_backdrop(scene: Scene, rng: np.random.Generator, backdrop: str, center: np.ndarray, eye: np.ndarray, clear: float) -> None:
    """Scenery for `backdrop` around the figures at `center`, seen from `eye`; nothing within `clear` m of the figures."""
    view = center - eye
    view[1] = 0
    view = normalize(view) if np.linalg.norm(view) > 1e-6 else np.array([1.0, 0, 0])
    across = np.array([-view[2], 0, view[0]])
    yaw = math.atan2(-view[2], view[0])  # turns a box's x axis onto `view`
    body = Body(scene, -1)
    ground_center = np.array([center[0], 0, center[2]])
    if backdrop in ("field", "park", "paddock"):
        _add_clutter(scene, rng, ground_center, clear + 1.5, int(rng.integers(1, 7)) + (5 if backdrop == "park" else 0), kinds=("tree", "bush") if backdrop == "park" else None)
        if backdrop == "paddock":
            _add_fences(scene, rng, ground_center, clear + rng.uniform(0.5, 3), view)
            body.material("wall", _wall_material(rng, across, "planks"))
            back = ground_center + view * (clear + rng.uniform(6, 15))
            body.box(back + np.array([0, 2, 0]), (3, 2, rng.uniform(6, 12)), "wall", yaw)
    elif backdrop in ("street", "building"):
        if backdrop == "building" or rng.random() < 0.5:  # building fronts across the view
            depth = clear + (rng.uniform(1.5, 5) if backdrop == "building" else rng.uniform(5, 15))
            offset = -rng.uniform(0, 20)
            while offset < 40:
                width, height = rng.uniform(6, 15), rng.uniform(4, 20)
                body.material(f"wall{offset:.1f}", _wall_material(rng, across))
                spot = ground_center + view * (depth + 4) + across * (offset - 20 + width / 2) + np.array([0, height / 2, 0])
                body.box(spot, (4, height / 2, width / 2 - 0.05), f"wall{offset:.1f}", yaw)
                offset += width
        else:  # a street running away from the camera, buildings on both sides
            half_street = clear + rng.uniform(3, 8)
            for s in (-1, 1):
                offset = -20.0
                while offset < 80:
                    width, height = rng.uniform(6, 15), rng.uniform(5, 20)
                    body.material(f"wall{s}{offset:.1f}", _wall_material(rng, view))
                    spot = ground_center + view * (offset + width / 2) + across * s * (half_street + 4) + np.array([0, height / 2, 0])
                    body.box(spot, (width / 2 - 0.05, height / 2, 4), f"wall{s}{offset:.1f}", yaw)
                    offset += width
        body.material("metal", Material(colour(rng, [(0.15, 0.15, 0.15), (0.3, 0.35, 0.3)], 0.1), shine=0.4))
        for _ in range(int(rng.integers(0, 4))):  # lamp posts and bollards
            post = ground_center + view * rng.uniform(clear, clear + 12) + across * rng.uniform(-10, 10)
            if np.linalg.norm(post - ground_center) > clear:
                height = rng.choice([0.9, rng.uniform(3, 5)])
                body.capsule(post, post + np.array([0, height, 0]), 0.06, "metal")
    else:  # a room or a stable around camera and figures: back wall, side walls, ceiling
        back, half_width, height = clear + rng.uniform(0.5, 4), clear + rng.uniform(1, 5), rng.uniform(2.8, 4.5)
        near = float(np.linalg.norm((eye - ground_center)[[0, 2]])) + 2
        length = (back + near) / 2
        middle = ground_center + view * (back - length)
        body.material("wall", _wall_material(rng, across, "planks" if backdrop == "stable" else str(rng.choice(["solid", "solid", "bricks", "planks"]))))
        body.material("side", _wall_material(rng, view, "planks" if backdrop == "stable" else "solid"))
        body.material("ceiling", Material(colour(rng, [(0.9, 0.9, 0.88), (0.5, 0.38, 0.25)], 0.1)))
        body.box(ground_center + view * (back + 0.1) + np.array([0, height / 2, 0]), (0.1, height / 2, half_width + 0.2), "wall", yaw, shadow=False)
        for s in (-1, 1):
            body.box(middle + across * s * (half_width + 0.1) + np.array([0, height / 2, 0]), (length, height / 2, 0.1), "side", yaw, shadow=False)
        body.box(middle + np.array([0, height + 0.1, 0]), (length, 0.1, half_width + 0.2), "ceiling", yaw, shadow=False)
        body.material("frame", Material(colour(rng, WALLS + [(0.2, 0.3, 0.5)], 0.5), "patches", colour(rng, WALLS, 0.5), 4.0))
        for _ in range(int(rng.integers(0, 4))):  # pictures, doors and stall boards on the back wall
            w, h = rng.uniform(0.4, 1.5), rng.uniform(0.4, 2.0)
            spot = ground_center + view * back + across * rng.uniform(-half_width + w, half_width - w) + np.array([0, rng.uniform(h / 2, height - h / 2), 0])
            body.box(spot, (0.05, h / 2, w / 2), "frame", yaw, shadow=False)
    scene.primitives += body.place((0, 0, 0), 0.0)


def _add_fences(scene: Scene, rng: np.random.Generator, center: np.ndarray, radius: float, view: np.ndarray) -> None:
    """A paddock's rails: fence runs on a few sides of a square around `center`."""
    body = Body(scene, -1)
    body.material("wood", Material(colour(rng, [(0.55, 0.42, 0.3), (0.9, 0.9, 0.88), (0.3, 0.22, 0.15)], 0.2), grain=0.2))
    across = np.array([-view[2], 0, view[0]])
    for side, direction in ((view, across), (-view, across), (across, view), (-across, view)):
        if rng.random() < 0.4 and side is not view:
            continue
        start, end = center + side * radius - direction * radius, center + side * radius + direction * radius
        for k in np.linspace(0, 1, 6):
            post = start + (end - start) * k
            body.capsule(post, post + np.array([0, 1.3, 0]), 0.07, "wood")
        for h in (0.6, 1.2):
            body.capsule(start + np.array([0, h, 0]), end + np.array([0, h, 0]), 0.05, "wood")
    scene.primitives += body.place((0, 0, 0), 0.0)


def _add_clutter(scene: Scene, rng: np.random.Generator, center: np.ndarray, clear: float, count: int, toward: float | None = None, kinds=None) -> None:
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
        kind = str(rng.choice(kinds or ["tree", "rock", "bush", "fence"]))
        if kind == "tree":
            body.material("bark", Material(colour(rng, [(0.3, 0.2, 0.12)], 0.1), grain=0.3))
            body.material("leaves", Material(colour(rng, [(0.15, 0.4, 0.12), (0.6, 0.4, 0.1), (0.25, 0.35, 0.15)], 0.15), "patches", colour(rng, [(0.1, 0.3, 0.08)]), 2.0, grain=0.4))
            height = rng.uniform(2, 6)
            body.capsule((0, 0, 0), (0, height, 0), rng.uniform(0.1, 0.3), "bark")
            body.ellipsoid((0, height + 0.5, 0), rng.uniform(0.8, 2.5, 3) * [1, 1.2, 1], "leaves")
        elif kind in ("rock", "bush"):
            body.material("m", Material(colour(rng, [(0.5, 0.5, 0.48)] if kind == "rock" else [(0.2, 0.4, 0.15)], 0.2), "patches", colour(rng, [(0.4, 0.4, 0.38)]), 3.0, grain=0.3))
            radii = rng.uniform(0.3, 1.2, 3) * ([1, 0.6, 1] if kind == "rock" else [1, 0.8, 1])
            body.ellipsoid((0, radii[1] * 0.6, 0), radii, "m")
        else:
            body.material("wood", Material(colour(rng, [(0.55, 0.42, 0.3), (0.9, 0.9, 0.88)], 0.2)))
            posts = rng.integers(2, 5)
            for k in range(posts):
                body.capsule((k * 2.0, 0, 0), (k * 2.0, 1.2, 0), 0.06, "wood")
            for height in (0.6, 1.1):
                body.capsule((0, height, 0), ((posts - 1) * 2.0, height, 0), 0.04, "wood")
        scene.primitives += body.place(spot, rng.uniform(0, 2 * math.pi))


def add_hard_negatives(scene: Scene, rng: np.random.Generator, center: np.ndarray, clear: float, view: np.ndarray) -> list[str]:
    """One or two animals that are not horses, beside or behind the figures (scenery: not in the mask)."""
    animals = []
    for _ in range(1 if rng.random() < 0.7 else 2):
        species = str(rng.choice(HARD_NEGATIVES))
        angle = math.atan2(view[2], view[0]) + rng.uniform(-1.2, 1.2)
        spot = center + rng.uniform(clear, clear + 6) * np.array([math.cos(angle), 0, math.sin(angle)])
        body = build_quadruped(scene, -1, rng, str(rng.choice(["stand", "walk", "graze"])), species)
        scale = rng.uniform(*SPECIES_SCALE[species])
        spot[1] = -body.lowest() * scale
        scene.primitives += body.place(spot, rng.uniform(0, 2 * math.pi), scale)
        animals.append(species)
    return animals


class Rendering(NamedTuple):
    image: Image.Image  # RGB, size x size
    mask: Image.Image  # L, 255 where a figure (horse or person) covers the pixel, soft at the edges
    info: dict  # what it shows: label, seed, figures (kind, pose, share), coverage (the mask's mean), framing, backdrop, animals, camera, visible


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names, p = list(weights), np.array(list(weights.values()))
    return names[rng.choice(len(names), p=p / p.sum())]


def render_scene(label: str, seed: int, size: int = 299, max_attempts: int = 12, style: str = "photo") -> Rendering:
    """One image of `label`, its figure mask and what it shows; the same (label, seed, size) always gives the same.

    The figures, framing and backdrop are drawn once; the camera (and the scenery it sees) is
    redrawn, checked by the first (unshaded) pass of the render, until a figure of each kind
    drawn covers at least MIN_SHARE of the image. Half-way, the framing falls back to the whole
    figures. `style` is one of SCENE_STYLES; "photo" images do not depend on the other styles.
    """
    simple = style == "simple"
    rng = np.random.default_rng([seed, ("horse", "human", "both").index(label)])
    backdrop = "field" if simple else _choose(rng, BACKDROPS)
    scene = _light_and_ground(rng, backdrop)
    heading = rng.uniform(0, 2 * math.pi) if simple else None
    figures = compose(label, rng, scene, simple, heading)
    framing = "full" if simple else _choose(rng, {name: share for name, (share, _, _) in FRAMINGS[label].items()})
    figure_count = len(scene.primitives)
    with_animals = not simple and rng.random() < HARD_NEGATIVE_PROB
    all_points = np.array([p for f in figures for p in f.marks.values()])
    center = (all_points.min(0) + all_points.max(0)) / 2
    clear = float(np.ptp(all_points[:, [0, 2]], 0).max()) / 2 + 0.8
    best = None
    for attempt in range(max_attempts):
        del scene.primitives[figure_count:]
        if attempt == max_attempts // 2:
            framing = "full" if framing != "full" else "wide"
        _, fit, (low, high) = FRAMINGS[label][framing]
        camera, distance = frame_camera(_framed_points(fit, figures), rng.uniform(low, high), rng, size, heading)
        if not simple:
            add_backdrop(scene, rng, backdrop, center, camera.position, clear)
        animals = add_hard_negatives(scene, rng, center, clear + 0.5, camera.position - center) if with_animals else []
        if not simple and rng.random() < 0.1:  # an occluder between the camera and the figures
            toward = camera.position - center
            _add_clutter(scene, rng, center, np.linalg.norm(toward[[0, 2]]) * rng.uniform(0.3, 0.6), 1, math.atan2(toward[2], toward[0]))
        traced = trace(scene, camera)
        score = _visibility(_shares(traced.figure_id, len(scene.figures)), scene.figures)
        if best is None or score > best[0]:
            best = (score, camera, distance, list(scene.primitives), attempt, framing, animals, traced)
        if score >= 1:
            break
    score, camera, distance, scene.primitives, attempt, framing, animals, traced = best
    randomized = not simple and rng.random() < RANDOMIZED_SHARE
    if randomized:
        randomize_materials(scene, rng)
    pixels, figure_ids, coverage, depth = render(scene, camera, traced)
    if framing in CLOSE_FRAMINGS and rng.random() < 0.7:
        pixels = depth_of_field(pixels, depth, distance, rng.uniform(1, 3) * size / 128)
    shares = _shares(figure_ids, len(scene.figures))
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    mask = Image.fromarray((coverage * 255).round().astype(np.uint8))
    info = {"label": label, "seed": seed, "figures": [{**f, "share": round(s, 4)} for f, s in zip(scene.figures, shares)],
            "coverage": round(float(coverage.mean()), 4), "framing": framing,
            "backdrop": backdrop, "animals": animals, "attempts": attempt + 1, "fov": round(float(np.degrees(2 * np.arctan(size / 2 / camera.focal))), 1),
            "distance": round(distance, 2), "visible": score >= 1, "randomized": randomized}
    return Rendering(image, mask, info)


def randomize_materials(scene: Scene, rng: np.random.Generator) -> None:
    """Domain randomization: every surface (figures, scenery, ground, sky) in random colours and
    patterns, so that a model learns shapes rather than this renderer's palette."""
    for material in scene.materials:
        material.colour, material.colour2 = tuple(rng.uniform(0, 1, 3)), tuple(rng.uniform(0, 1, 3))
        material.pattern = str(rng.choice(["solid", "solid", "patches"]))  # no stripes: a striped horse is a zebra
        material.scale = rng.uniform(1, 10)
    scene.ground = (tuple(rng.uniform(0, 1, 3)), tuple(rng.uniform(0, 1, 3)))
    scene.sky = (tuple(rng.uniform(0.2, 1, 3)), tuple(rng.uniform(0, 1, 3)))


def _visibility(shares: list[float], figures: list[dict]) -> float:
    """At least 1 when the label is true to a viewer: for each kind drawn, its most visible figure
    covers MIN_SHARE of the image (the others of a group may be cut out by a close framing)."""
    return min(max(s for s, f in zip(shares, figures) if f["kind"] == kind) / MIN_SHARE[kind] for kind in {f["kind"] for f in figures})


def _shares(figure_ids: np.ndarray, count: int) -> list[float]:
    return [float((figure_ids == i).mean()) for i in range(count)]
