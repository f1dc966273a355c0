"""Articulated figures: horses, people and the four-legged animals that are not horses.

Figures are built in their own frame (x forward, y up, z to the left, metres, standing on y = 0)
from ellipsoids and capsules, with named marks (head top, waist, muzzle, ...) that the camera
frames, then scaled, turned and placed. Every draw comes from the scene's random generator, so a
seed gives the same figure. One quadruped builder draws horses and the hard negatives (cattle,
dogs, deer, donkeys) from different proportions, so that "four legs" alone never makes a horse.
"""

import math
from dataclasses import dataclass

import numpy as np

from cgi2real.synth.render import Material, Primitive, Scene, normalize

HORSE_COATS = [(0.42, 0.22, 0.1), (0.55, 0.27, 0.1), (0.1, 0.08, 0.07), (0.62, 0.6, 0.56), (0.85, 0.83, 0.78),
               (0.8, 0.62, 0.3), (0.62, 0.5, 0.33), (0.3, 0.2, 0.15)]  # bay, chestnut, black, grey, white, palomino, dun, brown
SKIN = [(0.96, 0.8, 0.69), (0.88, 0.67, 0.52), (0.72, 0.52, 0.38), (0.55, 0.37, 0.25), (0.36, 0.23, 0.15)]
HAIR = [(0.08, 0.06, 0.05), (0.3, 0.18, 0.1), (0.75, 0.6, 0.35), (0.6, 0.6, 0.6), (0.55, 0.22, 0.08)]
CLOTH = [(0.1, 0.1, 0.12), (0.15, 0.2, 0.4), (0.5, 0.1, 0.1), (0.3, 0.35, 0.2), (0.75, 0.72, 0.65), (0.9, 0.9, 0.9), (0.45, 0.3, 0.2), (0.2, 0.3, 0.5)]
HORSE_POSES = ("stand", "walk", "trot", "gallop", "graze")
HUMAN_POSES = ("stand", "walk", "wave", "point")


def colour(rng: np.random.Generator, palette, randomize: float = 0.2) -> tuple:
    """A palette colour with a little variation, or (with probability `randomize`) any colour."""
    if rng.random() < randomize:
        return tuple(rng.uniform(0.05, 0.95, 3))
    base = np.asarray(palette[rng.integers(len(palette))])
    return tuple((base * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3)).clip(0, 1))


def yaw_rotation(yaw: float) -> np.ndarray:
    """The rotation by `yaw` radians about the vertical axis (x towards -z)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _direction(angle: float, spread: float = 0.0) -> np.ndarray:
    """A unit vector `angle` radians forward of straight down, tilted `spread` radians sideways (+z)."""
    return np.array([math.sin(angle), -math.cos(angle) * math.cos(spread), math.cos(angle) * math.sin(spread)])


class Body:
    """Primitives of one figure in its own frame, with named materials and named marks."""

    def __init__(self, scene: Scene, figure: int):
        self.scene, self.figure, self.parts, self.materials, self.marks = scene, figure, [], {}, {}

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

    def box(self, center, half, material: str, yaw: float = 0.0, shadow: bool = True) -> None:
        """A box with half-sides `half`, turned `yaw` radians about the vertical axis (scenery: walls, ceilings, frames)."""
        rotation = yaw_rotation(yaw)
        self.parts.append(Primitive("box", self.materials[material], self.figure, center=np.asarray(center, float), rotation=rotation, radii=np.asarray(half, float), shadow=shadow))

    def limb(self, start, angles, lengths, radii, materials, spread: float = 0.0) -> np.ndarray:
        """A chain of capsules from `start`; returns the end point."""
        point = np.asarray(start, float)
        for angle, length, radius, material in zip(angles, lengths, radii, materials):
            end = point + length * _direction(angle, spread)
            self.capsule(point, end, radius, material)
            point = end
        return point

    def transform(self, position, yaw: float, scale: float = 1.0):
        """The map from this figure's frame to the world: scale, turn `yaw` about the vertical, move."""
        turn = yaw_rotation(yaw)
        return lambda p: turn @ (np.asarray(p) * scale) + np.asarray(position, float), turn

    def place(self, position, yaw: float, scale: float = 1.0) -> list[Primitive]:
        """The primitives scaled, turned `yaw` radians about the vertical axis and moved to `position`."""
        move, turn = self.transform(position, yaw, scale)
        placed = []
        for p in self.parts:
            if p.kind == "capsule":
                placed.append(Primitive("capsule", p.material, p.figure, a=move(p.a), b=move(p.b), radius=p.radius * scale))
            else:
                placed.append(Primitive(p.kind, p.material, p.figure, center=move(p.center), rotation=turn @ p.rotation, radii=p.radii * scale, shadow=p.shadow))
        return placed

    def placed_marks(self, position, yaw: float, scale: float = 1.0) -> dict[str, np.ndarray]:
        move, _ = self.transform(position, yaw, scale)
        return {name: move(point) for name, point in self.marks.items()}

    def lowest(self) -> float:
        """The lowest point of the figure (to stand it on the ground)."""
        lows = [min(p.a[1], p.b[1]) - p.radius if p.kind == "capsule" else p.center[1] - p.radii.max() for p in self.parts]
        return min(lows)


@dataclass(frozen=True)
class Shape:
    """Proportions of a four-legged animal, as factors of a horse's (1.0 is a horse's)."""

    length: float = 1.0  # body length
    girth: float = 1.0  # barrel, chest and rump thickness
    legs: float = 1.0  # leg length
    leg_width: float = 1.0
    neck: float = 1.0  # neck length
    lift: tuple = (35, 70)  # neck angle above horizontal, degrees
    head: float = 1.0  # head length
    muzzle: float = 1.0  # muzzle thickness
    ears: float = 1.0  # ear length
    mane: bool = True  # a hanging mane and forelock
    tail: str = "hair"  # hair (a long flowing tail) | tuft (a thin tail with a tuft) | up (a dog's)
    horns: str = "none"  # none | horns | antlers
    coats: tuple = tuple(HORSE_COATS)
    patches: float = 0.2  # share of coats with white patches (pinto, holstein)


SPECIES = {
    "horse": Shape(),
    "cattle": Shape(length=1.1, girth=1.3, legs=0.7, leg_width=1.3, neck=0.55, lift=(0, 20), head=0.9, muzzle=1.4, ears=0.7, mane=False, tail="tuft",
                    horns="horns", coats=((0.1, 0.08, 0.07), (0.45, 0.25, 0.12), (0.75, 0.6, 0.4), (0.9, 0.88, 0.85)), patches=0.5),
    "dog": Shape(length=0.9, girth=0.85, legs=0.9, leg_width=0.8, neck=0.5, lift=(25, 50), head=0.7, muzzle=1.0, ears=1.1, mane=False, tail="up",
                 coats=((0.1, 0.08, 0.07), (0.6, 0.45, 0.25), (0.85, 0.75, 0.55), (0.45, 0.3, 0.2), (0.9, 0.9, 0.88)), patches=0.3),
    "deer": Shape(length=0.8, girth=0.75, legs=1.15, leg_width=0.65, neck=0.9, lift=(50, 70), head=0.7, muzzle=0.7, ears=1.7, mane=False, tail="tuft",
                  horns="antlers", coats=((0.55, 0.38, 0.22), (0.45, 0.32, 0.2), (0.62, 0.48, 0.3)), patches=0.0),
    "donkey": Shape(length=0.85, girth=0.95, legs=0.85, neck=0.75, lift=(20, 40), head=1.05, muzzle=1.2, ears=2.4, mane=False, tail="tuft",
                    coats=((0.5, 0.48, 0.45), (0.4, 0.33, 0.27), (0.3, 0.27, 0.25)), patches=0.0),
}
# How big each species stands against a horse (the figure's scale, drawn uniformly in this range).
SPECIES_SCALE = {"horse": (0.85, 1.15), "cattle": (0.85, 1.0), "dog": (0.3, 0.45), "deer": (0.6, 0.75), "donkey": (0.65, 0.75)}
HARD_NEGATIVES = ("cattle", "cattle", "dog", "dog", "deer", "donkey")  # a donkey is kept rare


def build_quadruped(scene: Scene, figure: int, rng: np.random.Generator, pose: str, species: str = "horse") -> Body:
    """A horse (or another four-legged animal): barrel, chest and rump, four jointed legs with hooves,
    neck with a hanging mane, head with ears, eyes and nostrils, and a tail that swings with the gait."""
    shape = SPECIES[species]
    body = Body(scene, figure)
    coat = colour(rng, shape.coats, 0.1 if species == "horse" else 0.0)
    patched = rng.random() < shape.patches
    body.material("coat", Material(coat, "patches" if patched else "solid", (0.93, 0.92, 0.9), rng.uniform(1.5, 4), 0.15, grain=0.12))
    body.material("hair", Material(colour(rng, [(0.05, 0.04, 0.04), tuple(np.asarray(coat) * 0.5), (0.85, 0.8, 0.65)], 0.1), grain=0.3))
    body.material("hoof", Material((0.12, 0.11, 0.1), shine=0.2))
    body.material("sock", Material((0.93, 0.92, 0.9), grain=0.1))  # white lower legs and blazes, on some horses
    body.material("eye", Material((0.03, 0.03, 0.03), shine=0.6))
    body.material("horn", Material(colour(rng, [(0.85, 0.8, 0.7), (0.35, 0.25, 0.15)], 0.0), shine=0.2))
    length, legs, neck = shape.length * rng.uniform(0.9, 1.1), shape.legs * rng.uniform(0.9, 1.1), shape.neck * rng.uniform(0.85, 1.15)
    g = shape.girth

    body.ellipsoid((0, 1.35, 0), (0.72 * length, 0.33 * g, 0.29 * g), "coat")  # barrel
    body.ellipsoid((0.5 * length, 1.38, 0), (0.33 * g, 0.37 * g, 0.27 * g), "coat")  # chest
    body.ellipsoid((-0.5 * length, 1.42, 0), (0.36 * g, 0.37 * g, 0.29 * g), "coat")  # rump
    # Muscle over the bones: the shoulder sloping down from the withers, the quarters rounding into the thighs.
    body.ellipsoid((0.5 * length, 1.4, 0), (0.38 * g, 0.14 * g, 0.3 * g), "coat", (0.45, -1.0, 0))
    body.ellipsoid((-0.58 * length, 1.22, 0), (0.36 * g, 0.2 * g, 0.3 * g), "coat", (0.35, -1.0, 0))
    body.ellipsoid((0.32 * length, 1.62, 0), (0.25 * g, 0.1 * g, 0.12 * g), "coat", (1.0, -0.2, 0))  # withers

    # Neck and head: the neck rises at `lift`, deep at the base and tapering to the poll; the head
    # hangs down from its end, broad at the jaw and narrowing to the muzzle.
    lift = math.radians(rng.uniform(-55, -35) if pose == "graze" else rng.uniform(*shape.lift))
    base = np.array([0.55 * length, 1.5, 0])
    along = np.array([math.cos(lift), math.sin(lift), 0])
    up = np.array([-math.sin(lift), math.cos(lift), 0])
    poll = base + 0.8 * neck * along
    for k, depth in enumerate(np.linspace(0.3, 0.14, 9)):  # overlapping, so that the outline runs smooth
        body.ellipsoid(base + (0.1 + 0.075 * k) * neck * along - 0.02 * up, (0.22 * neck, depth * g, 0.6 * depth * g + 0.04), "coat", along)
    side = rng.choice([-1, 1])
    if shape.mane:  # a crest of hair along the top of the neck, strands hanging to one side, a forelock
        body.ellipsoid(base + 0.45 * neck * along + (0.1 + 0.1 * g) * up, (0.4 * neck, 0.05, 0.05), "hair", along)
        for k in range(10):
            crest = base + (0.08 + 0.075 * k) * neck * along + (0.12 + 0.1 * g * (1 - k / 12)) * up
            body.capsule(crest, crest + np.array([rng.normal(0, 0.03), -rng.uniform(0.12, 0.28), side * rng.uniform(0.05, 0.12)]), 0.028, "hair")
        body.capsule(poll + 0.04 * up, poll + 0.04 * up + np.array([0.12, -0.08, 0]), 0.03, "hair")
    head = shape.head
    head_angle = lift - math.radians(rng.uniform(100, 125))
    head_dir = np.array([math.cos(head_angle), math.sin(head_angle), 0])
    muzzle = poll + 0.52 * head * head_dir
    m = shape.muzzle
    body.ellipsoid(poll + 0.1 * head * head_dir, (0.16 * head, 0.15, 0.1), "coat", head_dir)  # jaw and cheek
    body.ellipsoid(poll + 0.3 * head * head_dir, (0.22 * head, 0.095 * m, 0.085 * m), "coat", head_dir)  # face
    body.ellipsoid(muzzle, (0.1, 0.09 * m, 0.085 * m), "coat", head_dir)
    if species == "horse" and rng.random() < 0.25:  # a blaze down the face
        body.ellipsoid(poll + 0.3 * head * head_dir + 0.07 * m * np.cross(head_dir, [0, 0, 1.0]), (0.2 * head, 0.02, 0.035), "sock", head_dir)
    for s in (-1, 1):
        ear = poll - 0.02 * head_dir + np.array([0, 0, 0.055 * s])
        ear_dir = normalize(along + 0.6 * up - 0.3 * head_dir + (np.array([0, -0.8, 0.9 * s]) if species in ("cattle", "dog") else 0))
        body.capsule(ear, ear + 0.13 * shape.ears * ear_dir, 0.028 * max(1.0, shape.ears * 0.6), "coat")
        body.ellipsoid(poll + 0.17 * head_dir + np.array([0, 0.03, 0.085 * s]), (0.028, 0.028, 0.02), "eye")
        body.ellipsoid(muzzle + 0.07 * head_dir + np.array([0, 0, 0.04 * s * m]), (0.02, 0.015, 0.015), "eye")  # nostril
        if shape.horns == "horns" and rng.random() < 0.7:
            body.capsule(poll + np.array([0, 0.05, 0.07 * s]), poll + np.array([0.03, 0.15, 0.22 * s]), 0.025, "horn")
        elif shape.horns == "antlers" and rng.random() < 0.5:
            tip = poll + np.array([-0.05, 0.45, 0.25 * s])
            body.capsule(poll + np.array([0, 0.05, 0.05 * s]), tip, 0.02, "horn")
            body.capsule(poll + np.array([-0.02, 0.25, 0.15 * s]), poll + np.array([0.15, 0.4, 0.18 * s]), 0.015, "horn")
    body.marks.update({"muzzle": muzzle, "poll": poll, "ears": poll + 0.15 * up, "neck": base, "withers": np.array([0.45 * length, 1.7, 0])})

    # Tail: three segments from the rump, swinging sideways with the gait.
    amplitude = {"stand": 0.05, "graze": 0.05, "walk": 0.25, "trot": 0.38, "gallop": 0.6}[pose]
    root = np.array([-0.86 * length, 1.55, 0])
    bend = rng.uniform(0.15, 0.6) if pose != "gallop" else rng.uniform(0.9, 1.3)
    sway = rng.normal(0, 0.15 + amplitude * 0.4)
    if shape.tail == "up":
        body.limb(root, [math.pi - 0.6], [0.35], [0.04], ["coat"], spread=sway)
    elif shape.tail == "tuft":
        end = body.limb(root, [-bend * 0.3], [0.7], [0.025], ["coat"], spread=sway)
        body.ellipsoid(end, (0.05, 0.1, 0.05), "hair")
    else:
        dock = body.limb(root, [-bend - 0.5], [0.22], [0.06], ["coat"], spread=sway * 0.5)
        for k in range(6):  # strands falling from the dock, fanning out
            fan = rng.normal(0, 0.12)
            mid = body.limb(dock, [-bend * 0.5 + fan], [rng.uniform(0.25, 0.35)], [0.045], ["hair"], spread=sway + fan)
            body.limb(mid, [-bend * 0.2 + 1.5 * fan], [rng.uniform(0.15, 0.3)], [0.03], ["hair"], spread=sway * 1.5 + 2 * fan)
    body.marks["tail"] = root

    # Legs: a gait phase per leg; a flexed leg swings forward with its lower joints folded.
    offsets = {"walk": (0, 0.5, 0.75, 0.25), "trot": (0, 0.5, 0.5, 0), "gallop": (0, 0.1, 0.5, 0.6)}.get(pose, tuple(rng.uniform(0, 1, 4)))
    phase = rng.uniform(0, 1)
    socks = species == "horse" and rng.random() < 0.25
    sock = [socks and rng.random() < 0.6 for _ in range(4)]
    w = shape.leg_width
    tops = [(0.5 * length, 1.15, 0.15 * g), (0.5 * length, 1.15, -0.15 * g), (-0.55 * length, 1.25, 0.16 * g), (-0.55 * length, 1.25, -0.16 * g)]
    for i, (top, offset) in enumerate(zip(tops, offsets)):
        cycle = 2 * math.pi * (phase + offset)
        swing = amplitude * math.sin(cycle) + rng.normal(0, 0.03)
        flex = max(0.0, math.cos(cycle)) * amplitude * 2.2
        lower = "sock" if sock[i] else "coat"
        if i < 2:  # front: forearm, cannon, pastern
            end = body.limb(top, [swing, swing - flex * 1.3, swing - flex * 0.7 + 0.3], [0.5 * legs, 0.4 * legs, 0.16], [0.085 * w, 0.05 * w, 0.045 * w], ["coat", lower, lower])
        else:  # hind: thigh, gaskin, cannon, pastern (the hock points back)
            end = body.limb(top, [swing + 0.3, swing - 0.55, swing - flex * 1.1, swing - flex + 0.3], [0.4, 0.4 * legs, 0.34 * legs, 0.15], [0.12 * w, 0.075 * w, 0.05 * w, 0.045 * w], ["coat", "coat", lower, lower])
        body.ellipsoid(end + np.array([0.02, -0.02, 0]), (0.075 * w, 0.055, 0.065 * w), "hoof")
        body.ellipsoid(end + np.array([0, 0.12, 0]), (0.05 * w, 0.05, 0.045 * w), lower)  # fetlock
        if i < 2:  # the forearm's muscle, thick under the chest and tapering to the knee
            body.ellipsoid(np.asarray(top) + 0.2 * legs * _direction(swing), (0.26 * legs, 0.1 * w, 0.085 * w), "coat", _direction(swing))
        else:  # the gaskin's, below the stifle
            gaskin = np.asarray(top) + 0.4 * _direction(swing + 0.3)
            body.ellipsoid(gaskin + 0.15 * legs * _direction(swing - 0.55), (0.2 * legs, 0.095 * w, 0.08 * w), "coat", _direction(swing - 0.55))
        body.marks[f"hoof{i}"] = end
    return body


def build_horse(scene: Scene, figure: int, rng: np.random.Generator, pose: str) -> Body:
    return build_quadruped(scene, figure, rng, pose, "horse")


def build_human(scene: Scene, figure: int, rng: np.random.Generator, pose: str) -> Body:
    """A person: head with hair, face and ears, neck, shoulders, torso, jointed arms and legs, feet,
    in an outfit (shirt, jacket, coat, dress; riders mostly in riding clothes) with a hat, helmet or
    backpack on some."""
    body = Body(scene, figure)
    seated = pose == "ride"
    outfit = "riding" if seated and rng.random() < 0.7 else str(rng.choice(["shirt", "shirt", "jacket", "coat", "dress"]))
    top_colour = colour(rng, CLOTH, 0.4)
    body.material("skin", Material(colour(rng, SKIN, 0.05), shine=0.1, grain=0.04))
    body.material("hair", Material(colour(rng, HAIR, 0.1), grain=0.25))
    body.material("face", Material((0.08, 0.05, 0.05), shine=0.4))  # eyes, brows, mouth
    body.material("shirt", Material(top_colour, "stripes" if rng.random() < 0.15 else "solid", colour(rng, CLOTH, 0.5), rng.uniform(4, 10), grain=0.15))
    trousers = [(0.15, 0.2, 0.4), (0.1, 0.1, 0.1), (0.6, 0.55, 0.4), (0.3, 0.25, 0.2)] if outfit != "riding" else [(0.9, 0.88, 0.82), (0.75, 0.7, 0.6)]
    body.material("trousers", Material(colour(rng, trousers, 0.2), grain=0.15))
    body.material("shoes", Material(colour(rng, [(0.1, 0.08, 0.07), (0.35, 0.2, 0.1), (0.9, 0.9, 0.9)], 0.1), shine=0.3))
    body.material("gear", Material(colour(rng, [(0.08, 0.08, 0.09), (0.3, 0.2, 0.12), (0.2, 0.25, 0.4), (0.5, 0.1, 0.1)], 0.3), shine=0.3, grain=0.1))
    width, belly = rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.3)

    body.ellipsoid((0, 0.95, 0), (0.12 * belly, 0.11, 0.17 * width), "trousers")  # pelvis
    body.ellipsoid((0, 1.2, 0), (0.12 * belly, 0.24, 0.18 * width), "shirt")  # belly
    body.ellipsoid((0.01, 1.35, 0), (0.13, 0.13, 0.2 * width), "shirt")  # chest
    body.capsule((0, 1.42, -0.17 * width), (0, 1.42, 0.17 * width), 0.065, "shirt")  # shoulders
    body.capsule((0, 1.45, 0), (0.01, 1.55, 0), 0.05, "skin")
    body.ellipsoid((0.01, 1.65, 0), (0.1, 0.12, 0.09), "skin")  # head
    body.ellipsoid((0.105, 1.64, 0), (0.025, 0.03, 0.02), "skin")  # nose
    for s in (-1, 1):
        body.ellipsoid((0.09, 1.675, 0.035 * s), (0.012, 0.012, 0.016), "face")  # eye
        body.ellipsoid((0.085, 1.705, 0.038 * s), (0.01, 0.006, 0.025), "hair")  # brow
        body.ellipsoid((0.0, 1.65, 0.09 * s), (0.02, 0.03, 0.012), "skin")  # ear
    body.ellipsoid((0.09, 1.6, 0), (0.01, 0.008, 0.03), "face")  # mouth
    headwear = "helmet" if outfit == "riding" else str(rng.choice(["hair", "hair", "hair", "long", "hat"]))
    if headwear == "helmet":
        body.ellipsoid((0.0, 1.7, 0), (0.12, 0.09, 0.105), "gear")
        body.ellipsoid((0.11, 1.7, 0), (0.04, 0.01, 0.08), "gear")  # peak
    elif headwear == "hat":
        body.ellipsoid((-0.005, 1.725, 0), (0.17, 0.015, 0.17), "gear")  # brim
        body.ellipsoid((-0.005, 1.76, 0), (0.095, 0.06, 0.09), "gear")
    else:
        body.ellipsoid((-0.015, 1.69, 0), (0.105, 0.1, 0.095), "hair")
        if headwear == "long":
            body.ellipsoid((-0.06, 1.55, 0), (0.07, 0.17, 0.1), "hair")
    if outfit == "coat":
        body.ellipsoid((0, 1.0, 0), (0.16 * belly, 0.45, 0.22 * width), "shirt")  # to the knees
    elif outfit == "jacket":
        body.ellipsoid((0.005, 1.25, 0), (0.15 * belly, 0.27, 0.21 * width), "shirt")
    elif outfit == "dress" and not seated:
        body.ellipsoid((0, 0.78, 0), (0.2, 0.32, 0.24), "shirt")  # a skirt flaring to the knees
    if not seated and rng.random() < 0.15:
        body.ellipsoid((-0.18, 1.28, 0), (0.09, 0.2, 0.15), "gear")  # backpack

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
        hand = body.limb((0, 1.42, 0.2 * side * width), [arm, arm + elbow], [0.29, 0.27], [0.055, 0.045], ["shirt", "shirt" if outfit in ("coat", "jacket") else "skin"], spread=side * rng.uniform(0.05, 0.25))
        body.ellipsoid(hand + 0.04 * _direction(arm + elbow), (0.06, 0.045, 0.03), "skin", _direction(arm + elbow))
        # Legs: thigh, shin, foot. Seated riders straddle: thighs down and forward along the flanks,
        # knees bent so that the shins hang to the stirrups under the rider.
        if seated:
            hip, knee, spread = rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.2), side * rng.uniform(0.6, 0.75)
        elif pose == "walk":
            hip = 0.35 * math.sin(walk + math.pi * (side < 0))
            knee, spread = max(0.0, math.cos(walk + math.pi * (side < 0))) * 0.6, side * 0.04
        else:
            hip, knee, spread = rng.uniform(-0.08, 0.08), rng.uniform(0, 0.1), side * rng.uniform(0.02, 0.12)
        shin = "gear" if outfit == "riding" else ("skin" if outfit == "dress" else "trousers")  # tall boots
        ankle = body.limb((0, 0.92, 0.09 * side), [hip, hip - knee], [0.44, 0.43], [0.08, 0.058], ["skin" if outfit == "dress" else "trousers", shin], spread=spread)
        body.ellipsoid(ankle + np.array([0.06, -0.03, 0]), (0.12, 0.045, 0.05), "shoes")
        body.marks[f"knee{side}"] = np.array([0.44 * math.sin(hip), 0.92 - 0.44 * math.cos(hip), 0.09 * side])
        body.marks[f"foot{side}"] = ankle
        body.marks[f"shoulder{side}"] = np.array([0, 1.45, 0.24 * side * width])
    body.marks.update({"top": np.array([0.0, 1.8, 0]), "chin": np.array([0.05, 1.53, 0]), "chest": np.array([0.0, 1.25, 0]), "waist": np.array([0.0, 1.0, 0])})
    return body
