"""A small numpy ray caster: ellipsoids, capsules and boxes on a ground plane under a sky, one sun.

Every pixel casts one ray from a pinhole camera. Each primitive is intersected only over the
pixels of its projected bounding sphere, a z-buffer keeps the nearest hit, and the ground
receives real shadows (a second ray towards the sun, again only where a primitive's shadow can
fall), softened in screen space. Shading is Lambert plus ambient sky light and a little specular,
with procedural textures (patches, stripes, bricks, planks, windows, fine grain) evaluated at the
3D hit point. `depth_of_field` blurs what lies far behind the focus, as a lens does up close.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)


@dataclass
class Material:
    colour: tuple[float, float, float]  # linear RGB in [0, 1]
    pattern: str = "solid"  # solid | patches (noise blotches) | stripes (horizontal) | bricks | planks | windows
    colour2: tuple[float, float, float] = (1.0, 1.0, 1.0)  # the pattern's second colour (mortar, glass, ...)
    scale: float = 3.0  # pattern frequency, cycles per metre
    shine: float = 0.1  # specular strength
    grain: float = 0.0  # fine noise on the albedo (hair, cloth, skin, stone), as a fraction of it
    across: tuple[float, float, float] = (1.0, 0.0, 0.0)  # the horizontal direction of bricks, planks and windows


@dataclass
class Primitive:
    """An ellipsoid or a box (center, rotation, radii: semi-axes or half-sides) or a capsule (a, b, radius).

    Tagged with its figure; scenery (-1) may be kept out of the shadow pass (`shadow=False`: a
    ceiling would otherwise darken the whole floor).
    """

    kind: str  # "ellipsoid" | "capsule" | "box"
    material: int  # index into Scene.materials
    figure: int  # index into Scene.figures, or -1 for scenery
    center: np.ndarray = None
    rotation: np.ndarray = None  # columns: the ellipsoid's (box's) axes in world space
    radii: np.ndarray = None
    a: np.ndarray = None
    b: np.ndarray = None
    radius: float = 0.0
    shadow: bool = True

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        if self.kind == "ellipsoid":
            return self.center, float(self.radii.max())
        if self.kind == "box":
            return self.center, float(np.linalg.norm(self.radii))
        return (self.a + self.b) / 2, float(np.linalg.norm(self.b - self.a) / 2 + self.radius)

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Ray parameters t (inf where missed) for rays origins + t * dirs.

        `dirs` is (N, 3); `origins` is one point (3,) for camera rays or (N, 3) for shadow rays.
        """
        return {"ellipsoid": _ellipsoid, "capsule": _capsule, "box": _box}[self.kind](self, origins, dirs)

    def normal(self, points: np.ndarray) -> np.ndarray:
        """Unit outward normals at points on the surface (N, 3): computed for the winning hits only."""
        if self.kind == "capsule":
            ba = self.b - self.a
            pa = points - self.a
            along = ((pa @ ba) / (ba @ ba)).clip(0, 1)
            return normalize(pa - along[:, None] * ba)
        local = (points - self.center) @ self.rotation
        if self.kind == "ellipsoid":
            return normalize((local / self.radii**2) @ self.rotation.T)
        axis = (np.abs(local) / self.radii).argmax(-1)
        face = np.zeros_like(local)
        face[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
        return face @ self.rotation.T


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1)


def _ellipsoid(p: Primitive, origins, dirs):
    o = ((origins - p.center) @ p.rotation) / p.radii  # rays in the frame where the ellipsoid is a unit sphere
    d = (dirs @ p.rotation) / p.radii
    a, b, c = _dot(d, d), 2 * _dot(d, o), _dot(o, o) - 1
    disc = b * b - 4 * a * c
    t = np.where(disc >= 0, (-b - np.sqrt(disc.clip(0))) / (2 * a), np.inf)
    return np.where(t > 1e-4, t, np.inf)


def _box(p: Primitive, origins, dirs):
    # Slabs in the box's own frame; rays that start inside a box see nothing of it.
    o = (origins - p.center) @ p.rotation
    d = dirs @ p.rotation
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (-p.radii - o) * inv, (p.radii - o) * inv
    t_near, t_far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((t_near <= t_far) & (t_near > 1e-4), t_near, np.inf)


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
    return np.where(t > 1e-4, t, np.inf)


MIN_PIXELS = 0.3  # primitives whose bounding sphere projects to a smaller radius are not traced


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

    def rays(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """Unit ray directions through pixel positions (row, col in pixels, 0.5 is a first pixel's centre).

        Without positions: every pixel centre (size*size, 3), row-major from the top-left pixel.
        """
        if rows is None:
            c = np.arange(self.size) + 0.5
            rows, cols = np.repeat(c, self.size), np.tile(c, self.size)
        x, y = (cols - self.size / 2) / self.focal, -(rows - self.size / 2) / self.focal
        return normalize(np.stack([x, y, -np.ones_like(x)], axis=-1) @ self.rotation.T)

    def pixel_box(self, center, radius) -> tuple[int, int, int, int] | None:
        """The pixel rectangle (r0, r1, c0, c1) a sphere can cover, or None if it is behind, outside,
        or smaller than MIN_PIXELS (an eye at 96 px: level of detail, it would not show)."""
        local = (np.asarray(center) - self.position) @ self.rotation
        depth = -local[2]
        if depth <= radius * 1.05:
            return (0, self.size, 0, self.size) if depth > -radius else None
        projected = radius / np.sqrt(depth**2 - radius**2) * self.focal
        if projected < MIN_PIXELS:
            return None
        spread = projected * 1.1 + 1
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
    ground_pattern: str = "noise"  # noise | tiles | planks | asphalt (noise plus lane lines)
    haze: float = 0.01  # fog density per metre
    noise: np.ndarray = field(default_factory=lambda: np.random.default_rng(0).normal(size=(4, 4)))  # plane waves
    grain: np.ndarray = field(default_factory=lambda: np.random.default_rng(1).normal(size=(8, 4)))  # finer plane waves

    def add_material(self, material: Material) -> int:
        self.materials.append(material)
        return len(self.materials) - 1


class Rendered(NamedTuple):
    image: np.ndarray  # (S, S, 3) float RGB in [0, 1]
    figure_id: np.ndarray  # (S, S) figure index at each pixel's centre, -1 for none
    coverage: np.ndarray  # (S, S) share of each pixel a figure covers, in [0, 1]
    depth: np.ndarray  # (S, S) distance along the central ray, inf for the sky


def _noise(points: np.ndarray, waves: np.ndarray, scale: float) -> np.ndarray:
    """Smooth pseudo-random values in about [-1, 1]: a sum of plane waves at `scale` cycles per metre."""
    phase = points @ waves[:, :3].T * scale * 2 * np.pi + waves[:, 3] * 10
    return np.sin(phase).sum(-1) / np.sqrt(waves.shape[0] / 2)


class _Hits(NamedTuple):
    depth: np.ndarray  # distance to the nearest primitive, inf for none
    normal: np.ndarray
    which: np.ndarray  # index of that primitive, -1 for none
    t_ground: np.ndarray  # distance to the ground plane, inf for none


def _trace(scene: Scene, camera: Camera, dirs: np.ndarray, pixels: np.ndarray | None) -> _Hits:
    """Nearest hits of rays from the camera. Each primitive is tested only against the rays of the
    pixels its bounding sphere can cover: `pixels` gives each ray's pixel (row-major index,
    sorted), or None for one ray per pixel in order (then a box is a slice of the image)."""
    n = len(dirs)
    depth, normal, which = np.full(n, np.inf), np.zeros((n, 3)), np.full(n, -1)
    grid = np.arange(n).reshape(camera.size, camera.size) if pixels is None else None
    cols = None if pixels is None else pixels % camera.size
    for i, prim in enumerate(scene.primitives):
        box = camera.pixel_box(*prim.bounding_sphere())
        if box is None:
            continue
        if grid is not None:
            idx = grid[box[0]:box[1], box[2]:box[3]].ravel()
        else:  # `pixels` is sorted: the box's rows are one slice of it
            first, last = np.searchsorted(pixels, (box[0] * camera.size, box[1] * camera.size))
            idx = first + np.flatnonzero((cols[first:last] >= box[2]) & (cols[first:last] < box[3]))
        t = prim.intersect(camera.position, dirs[idx])
        nearer = t < depth[idx]
        idx = idx[nearer]
        depth[idx], which[idx] = t[nearer], i
    with np.errstate(divide="ignore"):
        t_ground = np.where(dirs[:, 1] < -1e-6, -camera.position[1] / dirs[:, 1], np.inf)
    order = np.argsort(which, kind="stable")  # normals only where a primitive won, one primitive at a time
    ids, starts = np.unique(which[order], return_index=True)
    for i, won in zip(ids, np.split(order, starts[1:])):
        if i >= 0:
            normal[won] = scene.primitives[i].normal(camera.position + depth[won, None] * dirs[won])
    return _Hits(depth, normal, which, t_ground)


def _shade(scene: Scene, camera: Camera, dirs: np.ndarray, hits: _Hits, lit: np.ndarray) -> np.ndarray:
    """Colours of the rays: sky, ground (in the sun by the fraction `lit` per ray) or primitive, with haze."""
    on_ground = hits.t_ground < hits.depth
    on_prim = (hits.which >= 0) & ~on_ground
    image = _sky(scene, dirs)
    ground_points = camera.position + hits.t_ground[on_ground, None] * dirs[on_ground]
    image[on_ground] = _shade_ground(scene, ground_points, hits.t_ground[on_ground], lit[on_ground])
    points = camera.position + hits.depth[on_prim, None] * dirs[on_prim]
    image[on_prim] = _shade_primitives(scene, hits.which[on_prim], points, hits.normal[on_prim], dirs[on_prim])
    # Aerial perspective: distant things fade into the horizon colour.
    distance = _distance(hits)
    hit = np.isfinite(distance)
    fog = 1 - np.exp(-scene.haze * distance[hit])
    image[hit] = image[hit] * (1 - fog[:, None]) + np.asarray(scene.sky[0]) * fog[:, None]
    return image


def _distance(hits: _Hits) -> np.ndarray:
    return np.minimum(hits.depth, hits.t_ground)


def _figure_of(scene: Scene, hits: _Hits) -> np.ndarray:
    """The figure each ray shows, -1 for scenery, ground and sky."""
    figure_of = np.array([p.figure for p in scene.primitives] + [-1])
    return np.where(hits.t_ground < hits.depth, -1, figure_of[hits.which])


SUBSAMPLES = np.array([(-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25)])  # (row, col) offsets in a pixel


class Traced(NamedTuple):
    """The first pass of `render`: one ray per pixel, what it hits, and the figure it shows."""

    dirs: np.ndarray
    hits: _Hits
    figure_id: np.ndarray  # (S, S) figure index at each pixel's centre, -1 for none


def trace(scene: Scene, camera: Camera) -> Traced:
    """One ray through each pixel's centre: enough to see which figure shows where (no shading)."""
    dirs = camera.rays()
    hits = _trace(scene, camera, dirs, None)
    return Traced(dirs, hits, _figure_of(scene, hits).reshape(camera.size, camera.size))


def render(scene: Scene, camera: Camera, traced: Traced | None = None) -> Rendered:
    """Shade the scene at one ray per pixel (`traced`, or traced here), then four per pixel where the surface changes.

    Anti-aliasing where it shows: only pixels whose neighbours see another primitive (or
    ground, or sky) are traced again with a 2x2 grid of rays and averaged, which costs a fraction
    of supersampling the whole image. `figure_id` is the figure at each pixel's centre and
    `coverage` the share of each pixel's rays that hit a figure (a soft mask).
    """
    size = camera.size
    dirs, hits, figure_id = traced or trace(scene, camera)
    figure_id = figure_id.ravel()
    depth = _distance(hits).reshape(size, size)
    on_ground = hits.t_ground < hits.depth
    lit = np.zeros(len(dirs))
    lit[on_ground] = _sunlit(scene, camera.position + hits.t_ground[on_ground, None] * dirs[on_ground])
    lit = _soften(lit.reshape(size, size), on_ground.reshape(size, size), max(1, size // 50)).ravel()
    image = _shade(scene, camera, dirs, hits, lit)
    coverage = (figure_id >= 0).astype(float)

    surface = np.where(on_ground, -2, hits.which).reshape(size, size)
    edge = np.zeros((size, size), bool)
    edge[1:] |= surface[1:] != surface[:-1]
    edge[:-1] |= surface[1:] != surface[:-1]
    edge[:, 1:] |= surface[:, 1:] != surface[:, :-1]
    edge[:, :-1] |= surface[:, 1:] != surface[:, :-1]
    pixels = np.flatnonzero(edge)
    if len(pixels):
        rows, cols = np.divmod(pixels, size)
        sub_rows = (rows[:, None] + 0.5 + SUBSAMPLES[:, 0]).ravel()
        sub_cols = (cols[:, None] + 0.5 + SUBSAMPLES[:, 1]).ravel()
        sub_pixels = np.repeat(pixels, len(SUBSAMPLES))
        sub_dirs = camera.rays(sub_rows, sub_cols)
        sub_hits = _trace(scene, camera, sub_dirs, sub_pixels)
        sub_image = _shade(scene, camera, sub_dirs, sub_hits, lit[sub_pixels])
        image[pixels] = sub_image.reshape(len(pixels), len(SUBSAMPLES), 3).mean(1)
        coverage[pixels] = (_figure_of(scene, sub_hits) >= 0).reshape(len(pixels), len(SUBSAMPLES)).mean(1)
    return Rendered(image.reshape(size, size, 3).clip(0, 1), figure_id.reshape(size, size), coverage.reshape(size, size), depth)


def _box_blur(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, edges clamped, by two cumulative sums."""
    for axis in (0, 1):
        padded = np.pad(values, [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        sums = padded.cumsum(axis)
        values = (np.take(sums, np.arange(2 * radius + 1, sums.shape[axis]), axis) - np.take(sums, np.arange(0, sums.shape[axis] - 2 * radius - 1), axis)) / (2 * radius + 1)
    return values


def _soften(lit: np.ndarray, on_ground: np.ndarray, radius: int) -> np.ndarray:
    """Penumbrae: the sun term blurred over ground pixels only (a figure's pixels do not leak in)."""
    weight = on_ground.astype(float)
    return _box_blur(lit * weight, radius) / _box_blur(weight, radius).clip(1e-6)


def depth_of_field(image: np.ndarray, depth: np.ndarray, focus: float, strength: float) -> np.ndarray:
    """Blur what lies behind `focus` metres, more the further behind: a wide aperture up close.

    `strength` is the blur radius in pixels at infinite depth (0: everything sharp).
    """
    if strength < 0.5:
        return image
    sharp = Image.fromarray((image * 255).round().astype(np.uint8))
    blurred = np.asarray(sharp.filter(ImageFilter.GaussianBlur(strength)), dtype=float) / 255
    behind = np.where(np.isfinite(depth), 1 - focus / np.maximum(depth, focus), 1.0)
    weight = (behind * 2.5).clip(0, 1)[..., None]
    return image * (1 - weight) + blurred * weight


def _sky(scene: Scene, dirs: np.ndarray) -> np.ndarray:
    up = dirs[:, 1:2].clip(0, 1) ** 0.6
    sky = np.asarray(scene.sky[0]) * (1 - up) + np.asarray(scene.sky[1]) * up
    clouds = (_noise(dirs / np.maximum(dirs[:, 1:2], 0.05), scene.noise[:4], 0.15) - 0.6).clip(0, 1)[:, None]
    sun_glow = (dirs @ scene.sun).clip(0, 1)[:, None] ** 64
    return sky * (1 - 0.6 * clouds) + 0.6 * clouds + sun_glow


def _shade_ground(scene: Scene, points: np.ndarray, distance: np.ndarray, lit: np.ndarray) -> np.ndarray:
    # Texture contrast fades with distance, where one pixel spans many texture cycles (no moire).
    contrast = np.exp(-distance * scene.ground_scale / 15)
    mix = 0.5 + 0.5 * contrast * _noise(points, scene.noise, scene.ground_scale)
    x, z = points[:, 0], points[:, 2]
    if scene.ground_pattern == "tiles":
        seams = (np.minimum(np.abs(((x * 2) % 1) - 0.5), np.abs(((z * 2) % 1) - 0.5)) > 0.46) & (contrast > 0.3)
        mix = np.where(seams, mix - 0.6, mix)
    elif scene.ground_pattern == "planks":
        seams = (np.abs(((z * 5) % 1) - 0.5) > 0.45) & (contrast > 0.3)
        mix = np.where(seams, mix - 0.5, mix + 0.2 * np.sin(x * 3 + np.floor(z * 5) * 1.7))
    mix = mix.clip(0, 1)[:, None]
    albedo = np.asarray(scene.ground[0]) * mix + np.asarray(scene.ground[1]) * (1 - mix)
    if scene.ground_pattern == "asphalt":  # dashed lane lines in white paint
        lane = (np.abs(z % 8 - 4) < 0.08) & ((x % 6) < 3)
        albedo = np.where(lane[:, None], 0.85, albedo)
    light = 0.45 + 0.75 * scene.sun[1] * lit
    return albedo * light[:, None]


def _sunlit(scene: Scene, points: np.ndarray) -> np.ndarray:
    """1.0 where the sun reaches a ground point, 0.0 where a primitive shadows it."""
    lit = np.ones(len(points))
    x, z = points[:, 0], points[:, 2]
    for prim in scene.primitives:
        if not prim.shadow:
            continue
        center, radius = prim.bounding_sphere()
        # The bounding sphere's shadow on the ground: only the points under it need a shadow ray.
        foot = center - scene.sun * (center[1] / scene.sun[1])
        reach = (radius / scene.sun[1]) ** 2 * 1.2
        near = np.flatnonzero((np.abs(x - foot[0]) < reach**0.5) & (np.abs(z - foot[2]) < reach**0.5))
        near = near[lit[near] > 0]
        if len(near):
            t = prim.intersect(points[near], np.broadcast_to(scene.sun, (len(near), 3)))
            lit[near[np.isfinite(t)]] = 0.0
    return lit


def _pattern(material: Material, points: np.ndarray, scene: Scene) -> np.ndarray:
    """Where the second colour shows (bool per point), for the patterned materials."""
    u, v = points @ np.asarray(material.across), points[:, 1]
    if material.pattern == "patches":
        return _noise(points, scene.noise, material.scale) > 0.5
    if material.pattern == "stripes":
        return np.sin(v * material.scale * 2 * np.pi) > 0
    if material.pattern == "bricks":  # 0.25 x 0.075 m courses, every other one offset by half a brick
        row = np.floor(v / 0.075)
        return (((v / 0.075) % 1) < 0.12) | ((((u / 0.25) + 0.5 * (row % 2)) % 1) < 0.05)
    if material.pattern == "planks":  # vertical boards
        return ((u * material.scale) % 1) < 0.08
    if material.pattern == "windows":  # a grid of panes, one storey every 3 m
        return (((u / 3) % 1) > 0.3) & (((u / 3) % 1) < 0.75) & (((v / 3) % 1) > 0.3) & (((v / 3) % 1) < 0.8)
    return np.zeros(len(points), bool)


def _shade_primitives(scene: Scene, which: np.ndarray, points: np.ndarray, normals: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    colours = np.empty((len(which), 3))
    mats = np.array([p.material for p in scene.primitives])[which]
    for m in np.unique(mats):
        sel = mats == m
        material = scene.materials[m]
        albedo = np.broadcast_to(np.asarray(material.colour, float), (sel.sum(), 3)).copy()
        if material.pattern != "solid":
            albedo = np.where(_pattern(material, points[sel], scene)[:, None], np.asarray(material.colour2), albedo)
        if material.grain:
            albedo *= (1 + 0.35 * material.grain * _noise(points[sel], scene.grain, 30.0))[:, None]
        n = normals[sel]
        diffuse = (n @ scene.sun).clip(0, 1)
        sky_light = 0.35 + 0.15 * n[:, 1]  # more light on surfaces that face the sky
        half = normalize(scene.sun - dirs[sel])
        specular = material.shine * (n * half).sum(-1).clip(0, 1) ** 24
        colours[sel] = albedo * (sky_light + 0.8 * diffuse)[:, None] + specular[:, None]
    return colours
