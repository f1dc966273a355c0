"""A small numpy ray caster: ellipsoids and capsules on a ground plane under a sky, one sun.

Every pixel casts one ray from a pinhole camera. Each primitive is intersected only over the
pixels of its projected bounding sphere, a z-buffer keeps the nearest hit, and the ground
receives real shadows (a second ray towards the sun, again only where a primitive's shadow can
fall). Shading is Lambert plus ambient sky light and a little specular, with procedural textures
(patches, stripes) evaluated at the 3D hit point.
"""

from dataclasses import dataclass, field

import numpy as np


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)


@dataclass
class Material:
    colour: tuple[float, float, float]  # linear RGB in [0, 1]
    pattern: str = "solid"  # solid | patches (a second colour in noise blotches) | stripes
    colour2: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 3.0  # pattern frequency, cycles per metre
    shine: float = 0.1  # specular strength


@dataclass
class Primitive:
    """An ellipsoid (center, rotation, radii) or a capsule (a, b, radius), tagged with its figure."""

    kind: str  # "ellipsoid" | "capsule"
    material: int  # index into Scene.materials
    figure: int  # index into Scene.figures, or -1 for scenery
    center: np.ndarray = None
    rotation: np.ndarray = None  # columns: the ellipsoid's axes in world space
    radii: np.ndarray = None
    a: np.ndarray = None
    b: np.ndarray = None
    radius: float = 0.0

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        if self.kind == "ellipsoid":
            return self.center, float(self.radii.max())
        return (self.a + self.b) / 2, float(np.linalg.norm(self.b - self.a) / 2 + self.radius)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameters t (inf where missed) and unit normals for rays origins + t * dirs.

        `dirs` is (N, 3); `origins` is one point (3,) for camera rays or (N, 3) for shadow rays.
        """
        return (_ellipsoid if self.kind == "ellipsoid" else _capsule)(self, origins, dirs)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)


def _ellipsoid(p: Primitive, origins, dirs):
    o = ((origins - p.center) @ p.rotation) / p.radii  # rays in the frame where the ellipsoid is a unit sphere
    d = (dirs @ p.rotation) / p.radii
    a, b, c = _dot(d, d), 2 * _dot(d, o), _dot(o, o) - 1
    disc = b * b - 4 * a * c
    t = np.where(disc >= 0, (-b - np.sqrt(disc.clip(0))) / (2 * a), np.inf)
    t = np.where(t > 1e-4, t, np.inf)
    q = o + t[:, None].clip(max=1e6) * d
    normal = normalize((q / p.radii) @ p.rotation.T)
    return t, normal


def _capsule(p: Primitive, origins, dirs):
    # Inigo Quilez's ray-capsule intersection, vectorized over rays.
    ba, oa = p.b - p.a, origins - p.a
    baba, baoa, oaoa = ba @ ba, oa @ ba, _dot(oa, oa)
    bard, rdoa = dirs @ ba, _dot(dirs, oa)
    A = baba - bard * bard
    B = baba * rdoa - baoa * bard
    C = baba * oaoa - baoa * baoa - p.radius**2 * baba
    h = B * B - A * C
    with np.errstate(divide="ignore", invalid="ignore"):
        t_body = (-B - np.sqrt(h.clip(0))) / A
    y = baoa + t_body * bard
    body = (h >= 0) & (y > 0) & (y < baba) & (A > 1e-12)
    oc = np.where((y <= 0)[:, None], oa, origins - p.b)  # the end cap the ray meets
    Bc = _dot(dirs, oc)
    hc = Bc * Bc - (_dot(oc, oc) - p.radius**2)
    t_cap = np.where(hc > 0, -Bc - np.sqrt(hc.clip(0)), np.inf)
    t = np.where(body, t_body, np.where(h >= 0, t_cap, np.inf))
    t = np.where(t > 1e-4, t, np.inf)
    hit = origins + t[:, None].clip(max=1e6) * dirs
    pa = hit - p.a
    along = ((pa @ ba) / baba).clip(0, 1)
    return t, normalize(pa - along[:, None] * ba)


@dataclass
class Camera:
    position: np.ndarray
    rotation: np.ndarray  # columns: right, up, backward (the camera looks along -z)
    focal: float  # in pixels
    size: int

    @classmethod
    def look_at(cls, position, target, fov_degrees: float, size: int) -> "Camera":
        forward = normalize(np.asarray(target, float) - position)
        right = normalize(np.cross(forward, [0.0, 1.0, 0.0]))
        up = np.cross(right, forward)
        return cls(np.asarray(position, float), np.stack([right, up, -forward], axis=1), size / 2 / np.tan(np.radians(fov_degrees) / 2), size)

    def rays(self) -> np.ndarray:
        """Unit ray directions (size*size, 3), row-major from the top-left pixel."""
        c = (np.arange(self.size) + 0.5 - self.size / 2) / self.focal
        x, y = np.meshgrid(c, -c)
        return normalize(np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3) @ self.rotation.T)

    def pixel_box(self, center, radius) -> tuple[int, int, int, int] | None:
        """The pixel rectangle (r0, r1, c0, c1) a sphere can cover, or None if it is behind or outside."""
        local = (np.asarray(center) - self.position) @ self.rotation
        depth = -local[2]
        if depth <= radius * 1.05:
            return (0, self.size, 0, self.size) if depth > -radius else None
        spread = radius / np.sqrt(depth**2 - radius**2) * self.focal * 1.1 + 1
        u = self.size / 2 + local[0] / depth * self.focal
        v = self.size / 2 - local[1] / depth * self.focal
        box = (int(v - spread), int(v + spread) + 1, int(u - spread), int(u + spread) + 1)
        r0, r1, c0, c1 = max(box[0], 0), min(box[1], self.size), max(box[2], 0), min(box[3], self.size)
        return (r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


@dataclass
class Scene:
    primitives: list[Primitive] = field(default_factory=list)
    materials: list[Material] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)  # what was placed: kind, pose, ...
    sun: np.ndarray = field(default_factory=lambda: normalize(np.array([0.3, 0.8, 0.4])))
    sky: tuple = ((0.55, 0.7, 0.9), (0.2, 0.4, 0.8))  # horizon colour, zenith colour
    ground: tuple = ((0.3, 0.45, 0.2), (0.25, 0.35, 0.15))  # two ground colours mixed by noise
    ground_scale: float = 0.5  # ground texture frequency
    haze: float = 0.01  # fog density per metre
    noise: np.ndarray = field(default_factory=lambda: np.random.default_rng(0).normal(size=(4, 4)))  # plane waves

    def add_material(self, material: Material) -> int:
        self.materials.append(material)
        return len(self.materials) - 1


def _noise(points: np.ndarray, waves: np.ndarray, scale: float) -> np.ndarray:
    """Smooth pseudo-random values in about [-1, 1]: a sum of plane waves at `scale` cycles per metre."""
    phase = points @ waves[:, :3].T * scale * 2 * np.pi + waves[:, 3] * 10
    return np.sin(phase).sum(-1) / np.sqrt(waves.shape[0] / 2)


def render(scene: Scene, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Render to (float RGB image (S, S, 3) in [0, 1], figure id per pixel (S, S), -1 for none)."""
    n = camera.size * camera.size
    dirs = camera.rays()
    depth = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    which = np.full(n, -1)
    pixel_index = np.arange(n).reshape(camera.size, camera.size)
    for i, prim in enumerate(scene.primitives):
        box = camera.pixel_box(*prim.bounding_sphere())
        if box is None:
            continue
        idx = pixel_index[box[0]:box[1], box[2]:box[3]].ravel()
        t, nrm = prim.intersect(camera.position, dirs[idx])
        nearer = t < depth[idx]
        idx = idx[nearer]
        depth[idx], normal[idx], which[idx] = t[nearer], nrm[nearer], i

    # Ground plane y = 0 wherever it is nearer than every primitive.
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 1] < -1e-6, -camera.position[1] / dirs[:, 1], np.inf)
    on_ground = t_ground < depth
    image = _sky(scene, dirs)
    ground_points = camera.position + t_ground[on_ground, None] * dirs[on_ground]
    image[on_ground] = _shade_ground(scene, ground_points, t_ground[on_ground])

    on_figure = (which >= 0) & ~on_ground
    points = camera.position + depth[on_figure, None] * dirs[on_figure]
    image[on_figure] = _shade_primitives(scene, which[on_figure], points, normal[on_figure], dirs[on_figure])

    # Aerial perspective: distant things fade into the horizon colour.
    distance = np.where(on_ground, t_ground, np.where(on_figure, depth, np.inf))
    fog = 1 - np.exp(-scene.haze * np.where(np.isfinite(distance), distance, 0.0))
    hit = on_ground | on_figure
    image[hit] = image[hit] * (1 - fog[hit, None]) + np.asarray(scene.sky[0]) * fog[hit, None]

    figure_id = np.full(n, -1)
    figure_id[on_figure] = np.array([p.figure for p in scene.primitives])[which[on_figure]]
    return image.reshape(camera.size, camera.size, 3).clip(0, 1), figure_id.reshape(camera.size, camera.size)


def _sky(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    up = dirs[:, 1:2].clip(0, 1) ** 0.6
    sky = np.asarray(scene.sky[0]) * (1 - up) + np.asarray(scene.sky[1]) * up
    clouds = (_noise(dirs / np.maximum(dirs[:, 1:2], 0.05), scene.noise[:4], 0.15) - 0.6).clip(0, 1)[:, None]
    sun_glow = (dirs @ scene.sun).clip(0, 1)[:, None] ** 64
    return sky * (1 - 0.6 * clouds) + 0.6 * clouds + sun_glow


def _shade_ground(scene: Scene, points: np.ndarray, distance: np.ndarray) -> np.ndarray:
    # Texture contrast fades with distance, where one pixel spans many texture cycles (no moire).
    contrast = np.exp(-distance * scene.ground_scale / 15)
    mix = (0.5 + 0.5 * contrast * _noise(points, scene.noise, scene.ground_scale)).clip(0, 1)[:, None]
    albedo = np.asarray(scene.ground[0]) * mix + np.asarray(scene.ground[1]) * (1 - mix)
    light = 0.45 + 0.75 * scene.sun[1] * _sunlit(scene, points)
    return albedo * light[:, None]


def _sunlit(scene: Scene, points: np.ndarray) -> np.ndarray:
    """1.0 where the sun reaches a ground point, 0.0 where a primitive shadows it."""
    lit = np.ones(len(points))
    x, z = points[:, 0], points[:, 2]
    for prim in scene.primitives:
        center, radius = prim.bounding_sphere()
        # The bounding sphere's shadow on the ground: only the points under it need a shadow ray.
        foot = center - scene.sun * (center[1] / scene.sun[1])
        reach = (radius / scene.sun[1]) ** 2 * 1.2
        near = np.flatnonzero((np.abs(x - foot[0]) < reach**0.5) & (np.abs(z - foot[2]) < reach**0.5))
        near = near[lit[near] > 0]
        if len(near):
            t, _ = prim.intersect(points[near], np.broadcast_to(scene.sun, (len(near), 3)))
            lit[near[np.isfinite(t)]] = 0.0
    return lit


def _shade_primitives(scene: Scene, which: np.ndarray, points: np.ndarray, normals: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    colours = np.empty((len(which), 3))
    mats = np.array([p.material for p in scene.primitives])[which]
    for m in np.unique(mats):
        sel = mats == m
        material = scene.materials[m]
        albedo = np.broadcast_to(np.asarray(material.colour, float), (sel.sum(), 3)).copy()
        if material.pattern == "patches":
            blotch = (_noise(points[sel], scene.noise, material.scale) > 0.5)[:, None]
            albedo = np.where(blotch, np.asarray(material.colour2), albedo)
        elif material.pattern == "stripes":
            stripe = (np.sin(points[sel, 1] * material.scale * 2 * np.pi) > 0)[:, None]
            albedo = np.where(stripe, np.asarray(material.colour2), albedo)
        n = normals[sel]
        diffuse = (n @ scene.sun).clip(0, 1)
        sky_light = 0.35 + 0.15 * n[:, 1]  # more light on surfaces that face the sky
        half = normalize(scene.sun - dirs[sel])
        specular = material.shine * (n * half).sum(-1).clip(0, 1) ** 24
        colours[sel] = albedo * (sky_light + 0.8 * diffuse)[:, None] + specular[:, None]
    return colours
