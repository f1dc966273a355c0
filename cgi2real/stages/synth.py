"""Class folders of rendered images: `write_dataset` in local processes, `run` as a Ray Data job, and a contact sheet.

Image `i` of class `c` is rendered from seed `seed * 1_000_003 + i` and saved as
`DEST/<c>/<c>_<i:06d>.jpg` (JPEG quality 92), so the same arguments give the same files, and a
rerun into the same folder renders only the files that are missing. Its figure mask goes to
`DEST/_masks/<c>/<c>_<i:06d>.png` (see data.MASKS_FOLDER): training uses masks to put figures on
random backgrounds and to paste them into other images.

With `judge="imagenet"`, a horse or `both` image is kept only when ImageNet sees a horse in it
(`model.judge`: at least `HORSE_SEEN_BAR`); otherwise the scene is drawn again from the next
attempt's seed, up to `JUDGE_ATTEMPTS` times, and the best attempt is kept. People are not judged.
"""

import io
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
from PIL import Image, ImageDraw

from cgi2real.core.classes import DEFAULT_CLASSES, MASKS_FOLDER
from cgi2real.core.config import SynthConfig
from cgi2real.core.errors import InputError
from cgi2real.runtime.progress import Progress
from cgi2real.storage.locations import Location, check_output, first_line, locate
from cgi2real.synth.scenes import Rendering, render_scene

RENDERS_PER_BLOCK = 16
SETTINGS_FILE = "_synth.json"  # the settings a folder was made with; not in any class folder


def image_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


JUDGED_CLASSES = ("horse", "both")  # the classes whose renders show a horse
JUDGE_ATTEMPTS = 6  # all six below the bar (the median) one time in 64: then the best of them is kept
ATTEMPT_STRIDE = 2**40  # attempt k of an image draws from its seed + k * stride: no other image's seed


def image_name(label: str, index: int) -> str:
    return f"{label}/{label}_{index:06d}.jpg"


def mask_name(label: str, index: int) -> str:
    return f"{MASKS_FOLDER}/{label}/{label}_{index:06d}.png"


def write_rendering(root: Location, label: str, index: int, size: int, seed: int, masks: bool = True, scenes: str = "photo",
                    judge: str = "none") -> dict:
    """Render image `index` of `label`, write it (and its mask) under `root`; return what it shows.

    The mask goes first, so an image file on disk always has its mask (a rerun skips images).
    """
    rendering, jpeg = judged_rendering(label, image_seed(seed, index), size, scenes, judge)
    if masks:
        root.child(mask_name(label, index)).write_bytes(_encode(rendering.mask, "PNG", optimize=True))
    root.child(image_name(label, index)).write_bytes(jpeg)
    return rendering.info


def judged_rendering(label: str, seed: int, size: int, scenes: str = "photo", judge: str = "none") -> tuple[Rendering, bytes]:
    """The rendering of `label` from `seed` and its JPEG bytes; with `judge="imagenet"`, a horse or
    `both` scene is drawn again until ImageNet sees a horse in it (its info then says how many
    attempts it took and what the judge saw)."""
    if judge == "none" or label not in JUDGED_CLASSES:
        rendering = render_scene(label, seed, size, style=scenes)
        return rendering, _encode(rendering.image, "JPEG", quality=92)
    from cgi2real.model.judge import HORSE_SEEN_BAR, horse_judge

    best = None
    for attempt in range(JUDGE_ATTEMPTS):
        rendering = render_scene(label, seed + attempt * ATTEMPT_STRIDE, size, style=scenes)
        jpeg = _encode(rendering.image, "JPEG", quality=92)
        seen = float(horse_judge()([jpeg])[0])
        if best is None or seen > best[0]:
            best = (seen, rendering, jpeg)
        if seen >= HORSE_SEEN_BAR:
            break
    seen, rendering, jpeg = best
    rendering.info.update(judge_attempts=attempt + 1, horse_seen=round(seen, 5), judge_passed=seen >= HORSE_SEEN_BAR)
    return rendering, jpeg


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def write_dataset(out: str, per_class: int, size: int = 299, seed: int = 0, classes=DEFAULT_CLASSES, s3_endpoint: str | None = None,
                  processes: int = 1, judge: str = "none") -> int:
    """Render `per_class` images per class into out/<class>/ without Ray, in this process or in
    `processes` fresh ones (spawned: safe beside Ray's and torch's threads); return how many."""
    root = locate(out, s3_endpoint)
    jobs = [(label, i) for label in classes for i in range(per_class)]
    write = partial(write_rendering, root, size=size, seed=seed, judge=judge)
    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(write, *zip(*jobs), chunksize=-(-len(jobs) // (4 * processes))))
    else:
        for label, i in jobs:
            write(label, i)
    return len(jobs)


def render_batch(batch: dict, root: Location, size: int, seed: int, masks: bool, scenes: str = "photo", judge: str = "none") -> dict:
    """Ray Data map function: rows {label, index} -> the files written, with what each shows."""
    infos = [json.dumps(write_rendering(root, str(label), int(index), size, seed, masks, scenes, judge))
             for label, index in zip(batch["label"], batch["index"])]
    return {"label": batch["label"], "info": infos}


def run(cfg: SynthConfig) -> dict:
    """Render the class folders at cfg.out on Ray (local or the cluster in RAY_ADDRESS); return counts."""
    cfg.check()
    root = locate(cfg.out, cfg.s3_endpoint)
    check_output(root, "--out", [], "class folders")
    settings = {"size": cfg.size, "seed": cfg.seed, "scenes": cfg.scenes, "judge": cfg.judge}
    _check_settings(root, settings)
    existing = {info.path for info in root.list_files()} if root.is_dir() else set()
    todo = [{"label": c, "index": i} for c in cfg.classes for i in range(cfg.per_class) if root.child(image_name(c, i)).path not in existing]
    total = cfg.per_class * len(cfg.classes)
    if not todo:
        print(f"all {total} images already in {root.uri}")
    elif len(todo) < total:
        print(f"{total - len(todo)} of {total} images already in {root.uri}; rendering the other {len(todo)}", flush=True)
    else:
        print(f"rendering {total} images at {cfg.size} px into {root.uri}", flush=True)
    counts = {"written": 0, "already": total - len(todo), "redrawn_camera": 0, "not_visible": 0, "judged": 0, "judge_draws": 0, "below_bar": 0}
    coverage = {c: [] for c in cfg.classes}  # the share of each new image its figures cover
    if todo:
        import ray.data

        from cgi2real.runtime.cluster import check_local_paths, start_ray

        start_ray(min_cpus=1)
        check_local_paths({}, {"--out": root})  # rendering tasks write where they run
        # Blocks of about RENDERS_PER_BLOCK images: one task each (a task costs tens of ms to
        # start, a 96 px render about 40), and at least 8 of them while there are as many images.
        ds = ray.data.from_items(todo, override_num_blocks=max(min(len(todo), 8), min(len(todo) // RENDERS_PER_BLOCK, 1000)))
        ds = ds.map_batches(render_batch, fn_kwargs={"root": root, "size": cfg.size, "seed": cfg.seed, "masks": cfg.masks, "scenes": cfg.scenes,
                                                  "judge": cfg.judge}, batch_size=None)
        start = time.monotonic()
        with Progress("rendering", len(todo)) as progress:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for info in map(json.loads, batch["info"]):
                    counts["written"] += 1
                    counts["redrawn_camera"] += info["attempts"] > 1
                    counts["not_visible"] += not info["visible"]
                    if "judge_attempts" in info:
                        counts["judged"] += 1
                        counts["judge_draws"] += info["judge_attempts"]
                        counts["below_bar"] += not info["judge_passed"]
                    coverage[info["label"]].append(info["coverage"])
                progress.advance(len(batch["info"]))
        counts["seconds"] = time.monotonic() - start
        counts["coverage"] = {c: framing_summary(v) for c, v in coverage.items() if v}
    try:
        root.child(SETTINGS_FILE).write_bytes(json.dumps({**settings, "per_class": cfg.per_class, "classes": list(cfg.classes)}).encode())
    except OSError as e:
        raise InputError(f"cannot write to {root.uri}: {first_line(e)}") from None
    return counts


def framing_summary(coverage: list[float]) -> dict:
    """The distribution of figure shares (a mask's mean): 10th, 50th and 90th percentile, and how many."""
    p10, p50, p90 = np.percentile(coverage, [10, 50, 90])
    return {"p10": float(p10), "median": float(p50), "p90": float(p90), "n": len(coverage)}


def _check_settings(root: Location, settings: dict) -> None:
    """Refuse to add images of another size, seed, scene style or judge to a folder (it would mix two datasets)."""
    marker = root.child(SETTINGS_FILE)
    if not marker.exists():
        return
    previous = {"scenes": "photo", "judge": "none", **json.loads(marker.read_bytes())}  # folders from before --scenes, --judge
    changed = [k for k, v in settings.items() if previous.get(k) != v]
    if changed:
        raise InputError(
            f"{root.uri} was rendered with {', '.join(f'--{k} {previous.get(k)}' for k in changed)}; "
            "use the same settings to add to it, or another --out"
        )


def contact_sheet(path: str, per_class: int = 6, size: int = 299, seed: int = 0, classes=DEFAULT_CLASSES) -> None:
    """A PNG grid of samples, one row per class, each tile labeled with what it shows."""
    label_height = 18
    sheet = Image.new("RGB", (per_class * size, len(classes) * (size + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, label in enumerate(classes):
        for col in range(per_class):
            image, _, info = render_scene(label, image_seed(seed, col), size)
            top = row * (size + label_height)
            sheet.paste(image, (col * size, top + label_height))
            text = " + ".join(f"{f['kind']} ({f['pose']})" for f in info["figures"])
            draw.text((col * size + 4, top + 3), f"{label}: {text}"[: size // 6], fill="black")
    locate(path).write_bytes(_encode(sheet, "PNG", optimize=True))

