"""The CGI renderer: determinism, what each class shows, files on disk and S3, and learnability."""

import io
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cgi2real.core.classes import DEFAULT_CLASSES
from cgi2real.formats.class_folders import scan_image_files, scan_labeled_dataset
from cgi2real.imaging.presets import decode_image
from cgi2real.model.judge import HORSE_SEEN_BAR, horse_judge
from cgi2real.stages.synth import ATTEMPT_STRIDE, JUDGE_ATTEMPTS, contact_sheet, image_seed, judged_rendering, write_dataset
from cgi2real.synth.render import Scene, normalize
from cgi2real.synth.scenes import compose, render_scene
from tests.conftest import invoke


def test_same_seed_same_image_other_seed_other_image():
    a, _, info_a = render_scene("both", 7, 96)
    b, _, info_b = render_scene("both", 7, 96)
    c, _, _ = render_scene("both", 8, 96)
    assert a.size == (96, 96) and np.array_equal(np.asarray(a), np.asarray(b)) and info_a == info_b
    assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("label", DEFAULT_CLASSES)
def test_each_class_shows_what_its_label_says(label):
    """Over 12 seeds: `both` always has a visible horse and a visible person, the others only their kind."""
    for seed in range(12):
        _, _, info = render_scene(label, seed, 96)
        kinds = {f["kind"] for f in info["figures"]}
        assert kinds == ({"horse", "human"} if label == "both" else {label}), (seed, info)
        assert info["visible"], (seed, info)
        for kind in kinds:
            assert max(f["share"] for f in info["figures"] if f["kind"] == kind) >= {"horse": 0.03, "human": 0.008}[kind], (seed, info)


def test_the_relations_of_both_vary():
    relations = {render_scene("both", seed, 64).info["figures"][0]["relation"] for seed in range(16)}
    assert {"riding", "leading", "beside"} <= relations


def test_write_dataset_layout_and_every_image_decodes_at_its_size(tmp_path):
    assert write_dataset(str(tmp_path), 2, size=80, seed=3) == 6
    for label in DEFAULT_CLASSES:
        names = sorted(os.listdir(tmp_path / label))
        assert names == [f"{label}_000000.jpg", f"{label}_000001.jpg"]
        for name in names:
            assert decode_image((tmp_path / label / name).read_bytes()).size == (80, 80)
    # in two spawned processes (how the test fixtures render): the same files, to the byte
    assert write_dataset(str(tmp_path / "two"), 2, size=80, seed=3, processes=2) == 6
    for folder in (*DEFAULT_CLASSES, "_masks/horse"):
        for name in os.listdir(tmp_path / folder):
            assert (tmp_path / "two" / folder / name).read_bytes() == (tmp_path / folder / name).read_bytes(), name


def test_contact_sheet_is_a_png_grid(tmp_path):
    contact_sheet(str(tmp_path / "sheet.png"), per_class=2, size=64)
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.format == "PNG" and sheet.size == (2 * 64, 3 * (64 + 18))


@pytest.mark.slow
def test_synth_job_writes_class_folders_and_reruns_only_what_is_missing(ray_cluster, tmp_path):
    out = tmp_path / "cgi"
    output = invoke("synth", "--out", out, "--per-class", 3, "--size", 72, "--seed", 5).output
    assert "wrote 9 images" in output
    masks = {label: [np.asarray(Image.open(out / "_masks" / label / f"{label}_{i:06d}.png")).mean() / 255 for i in range(3)] for label in DEFAULT_CLASSES}
    for label in DEFAULT_CLASSES:  # the summary's framing line is the masks' distribution
        printed = re.search(rf"{label}: figures cover (\d+)% of the image \(median; 10th-90th percentile (\d+)%-(\d+)%\) in the 3 rendered", output)
        assert printed and abs(int(printed[1]) - 100 * np.median(masks[label])) <= 1, (output, masks)
    for label in DEFAULT_CLASSES:
        assert sorted(os.listdir(out / label)) == [f"{label}_{i:06d}.jpg" for i in range(3)]
    same = io.BytesIO()
    render_scene("horse", 5 * 1_000_003 + 1, 72).image.save(same, "JPEG", quality=92)
    assert (out / "horse" / "horse_000001.jpg").read_bytes() == same.getvalue()  # the same render, to the byte
    os.remove(out / "human" / "human_000002.jpg")
    again = invoke("synth", "--out", out, "--per-class", 3, "--size", 72, "--seed", 5).output
    assert "8 of 9 images already" in again and "wrote 1 images" in again
    refused = invoke("synth", "--out", out, "--per-class", 3, "--size", 96, "--seed", 5, code=2)
    assert "--size 72" in refused.stderr
    assert json.loads((out / "_synth.json").read_text())["size"] == 72
    assert sorted(os.listdir(out / "_masks" / "horse")) == [f"horse_{i:06d}.png" for i in range(3)]
    invoke("synth", "--out", tmp_path / "plain", "--per-class", 1, "--size", 64, "--no-masks")
    assert not (tmp_path / "plain" / "_masks").exists() and len(os.listdir(tmp_path / "plain" / "both")) == 1
    # judged on Ray: the same files as judged in one process (horse 3 of seed 4 on its second scene)
    judged = invoke("synth", "--out", tmp_path / "judged", "--per-class", 4, "--size", 96, "--seed", 4, "--classes", "horse", "--judge", "imagenet").output
    assert "judged: 4 horse and both images from 5 scenes drawn; 0 kept below the bar" in judged, judged
    assert (tmp_path / "judged" / "horse" / "horse_000003.jpg").read_bytes() == judged_rendering("horse", image_seed(4, 3), 96, judge="imagenet")[1]


@pytest.mark.slow
def test_synth_job_writes_to_s3(ray_cluster, s3_client, bucket, s3_endpoint):
    invoke("synth", "--out", f"s3://{bucket}/cgi", "--per-class", 2, "--size", 64, "--classes", "horse,both", "--s3-endpoint", s3_endpoint)
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="cgi/")["Contents"])
    assert [k for k in keys if k.endswith(".jpg")] == ["cgi/both/both_000000.jpg", "cgi/both/both_000001.jpg", "cgi/horse/horse_000000.jpg", "cgi/horse/horse_000001.jpg"]
    assert [k for k in keys if k.endswith(".png")] == ["cgi/_masks/both/both_000000.png", "cgi/_masks/both/both_000001.png", "cgi/_masks/horse/horse_000000.png", "cgi/_masks/horse/horse_000001.png"]


def test_the_imagenet_judge_keeps_the_first_scene_it_sees_a_horse_in(tmp_path, monkeypatch):
    """Horse and both scenes are drawn again until the judge's P(horse) reaches the bar, or the best of
    JUDGE_ATTEMPTS is kept; people are not judged; the files are what the judge saw."""
    judge = horse_judge()

    def check(label: str, seed: int, bar: float) -> int:
        rendering, jpeg = judged_rendering(label, seed, 96, judge="imagenet")
        attempts = rendering.info["judge_attempts"]
        drawn = [_jpeg(render_scene(label, seed + k * ATTEMPT_STRIDE, 96).image) for k in range(attempts)]
        seen = [float(judge([data])[0]) for data in drawn]
        assert all(p < bar for p in seen[:-1]), (label, seed, seen)
        if rendering.info["judge_passed"]:
            assert seen[-1] >= bar and jpeg == drawn[-1]
        else:
            assert attempts == JUDGE_ATTEMPTS and jpeg == drawn[int(np.argmax(seen))]
        assert rendering.info["horse_seen"] == pytest.approx(float(judge([jpeg])[0]), abs=1e-5)
        return attempts

    # seed 4: horse 3 and both 0 pass on their second scene, horse 7 on its fifth (at 96 px)
    assert [check(label, image_seed(4, i), HORSE_SEEN_BAR) for label, i in [("horse", 0), ("horse", 3), ("horse", 7), ("both", 0)]] == [1, 2, 5, 2]
    human = image_seed(4, 0)
    assert judged_rendering("human", human, 96, judge="imagenet")[1] == _jpeg(render_scene("human", human, 96).image)
    # write_dataset writes the judged files: horses 0-2 as drawn first, horse 3 its second scene
    write_dataset(str(tmp_path / "judged"), 4, size=96, seed=4, classes=("horse",), judge="imagenet")
    files = [(tmp_path / "judged" / "horse" / f"horse_{i:06d}.jpg").read_bytes() for i in range(4)]
    firsts = [_jpeg(render_scene("horse", image_seed(4, i), 96).image) for i in range(4)]
    assert [a == b for a, b in zip(files, firsts)] == [True, True, True, False]
    assert files[3] == _jpeg(render_scene("horse", image_seed(4, 3) + ATTEMPT_STRIDE, 96).image)
    # a bar no scene reaches: all JUDGE_ATTEMPTS drawn, the best kept
    monkeypatch.setattr("cgi2real.model.judge.HORSE_SEEN_BAR", 1.0)
    assert check("horse", image_seed(4, 0), 1.0) == JUDGE_ATTEMPTS


def test_a_folder_keeps_its_judge_and_an_unknown_judge_is_refused(tmp_path):
    (tmp_path / "_synth.json").write_text(json.dumps({"size": 64, "seed": 0, "scenes": "photo"}))  # rendered before --judge
    refused = invoke("synth", "--out", tmp_path, "--per-class", 1, "--size", 64, "--judge", "imagenet", code=2).stderr
    assert refused.strip().count("\n") == 0 and "--judge none" in refused, refused
    assert "--judge 'zebra': expected one of none, imagenet" in invoke("synth", "--out", tmp_path / "x", "--per-class", 1, "--judge", "zebra", code=2).stderr


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_unknown_class_is_refused():
    assert "cannot draw zebra" in invoke("synth", "--out", "/tmp/x", "--per-class", 1, "--classes", "horse,zebra", code=2).stderr


def _render(job: tuple[str, int]):
    rendering = render_scene(job[0], job[1], RENDER_SIZE)
    return np.asarray(rendering.image), np.asarray(rendering.mask), rendering.info


RENDER_SIZE, PER_CLASS = 64, 300


@pytest.fixture(scope="module")
def renders() -> dict[str, list]:
    """300 renders per class at 64 px (seeds 0-299): images, masks and what each shows, in two processes."""
    with ProcessPoolExecutor(2) as pool:
        done = list(pool.map(_render, [(label, i) for label in DEFAULT_CLASSES for i in range(PER_CLASS)], chunksize=25))
    return {label: done[k * PER_CLASS:(k + 1) * PER_CLASS] for k, label in enumerate(DEFAULT_CLASSES)}


@pytest.mark.slow
def test_figures_are_framed_as_in_photographs(renders):
    """Figure share of the image, from the masks, over 300 renders per class: big enough to see, with
    the context around them that photographs have, and every class framed in at least three ways.

    Issue 12 aimed at photographs' shares (a median horse 25 %, person 21 %: median 20-35 %, 10th
    percentile 5 %, 90th 40 %). Issue 29's judge, ImageNet features on real photos
    (`bench/renders.py`), preferred fewer close framings (a head, a rider close up, waist-up) and more
    whole figures and wide shots: figures now cover less. Held here: median 12-35 %, 10th percentile
    at least 2.5 %, 90th at least 30 %. Measured at 64 px (seeds 0-299), p10 / median / p90: both
    0.067 / 0.206 / 0.382, horse 0.053 / 0.255 / 0.422, human 0.030 / 0.152 / 0.403.
    """
    for label, done in renders.items():
        shares = [mask.mean() / 255 for _, mask, _ in done]
        p10, p50, p90 = np.percentile(shares, [10, 50, 90])
        assert 0.12 <= p50 <= 0.35 and p10 >= 0.025 and p90 >= 0.30, f"{label}: p10 {p10:.3f}, median {p50:.3f}, p90 {p90:.3f}"
        assert len({info["framing"] for _, _, info in done}) >= 3, label


@pytest.mark.slow
def test_no_backdrop_or_animal_gives_the_class_away(renders):
    """Backdrops and hard-negative animals are drawn alike for every class: a chi-square test of
    independence (backdrop x class, animals x class) stays under its 0.1 % critical value."""
    def chi_square(table: np.ndarray) -> float:
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        return float(((table - expected) ** 2 / expected).sum())

    backdrops = sorted({info["backdrop"] for done in renders.values() for _, _, info in done})
    assert len(backdrops) >= 6, backdrops
    by_backdrop = np.array([[sum(info["backdrop"] == b for _, _, info in renders[label]) for b in backdrops] for label in DEFAULT_CLASSES])
    assert chi_square(by_backdrop) < {5: 29.59, 6: 32.91, 7: 36.12}[len(backdrops) - 1], by_backdrop  # df = 2 x (backdrops - 1)
    with_animals = np.array([[sum(bool(info["animals"]) == a for _, _, info in renders[label]) for a in (False, True)] for label in DEFAULT_CLASSES])
    assert chi_square(with_animals) < 13.82 and with_animals[:, 1].min() >= 30, with_animals  # df = 2
    animals = {a for _, _, info in renders["human"] for a in info["animals"]}
    assert {"cattle", "dog", "deer"} <= animals and "horse" not in animals, animals


@pytest.mark.slow
def test_a_small_cnn_learns_the_classes_from_renders(renders):
    """Train a 4-block CNN on 225 renders per class (64 px), test on the other 75: it must beat chance (1/3) widely.

    Asserted: accuracy >= 0.5. Measured on the dev VM: 0.596 on 2026-12-03 (0.618 before issue 29; the previous renderer's easier
    scenes gave 0.66-0.69). With 225 test images the standard error is about 0.03: 0.5 sits
    about three of them below, and five above chance.
    """
    torch.manual_seed(0)
    split = 225
    x = {label: torch.from_numpy(np.stack([image for image, _, _ in done])).permute(0, 3, 1, 2).float() / 255 for label, done in renders.items()}
    x_train = torch.cat([x[label][:split] for label in DEFAULT_CLASSES])
    y_train = torch.arange(3).repeat_interleave(split)
    x_test = torch.cat([x[label][split:] for label in DEFAULT_CLASSES])
    y_test = torch.arange(3).repeat_interleave(PER_CLASS - split)

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 3))
    epochs, batch = 16, 32
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * -(-len(x_train) // batch))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(batch):
            images = x_train[idx]
            images = torch.where((torch.rand(len(idx)) < 0.5)[:, None, None, None], images.flip(3), images)
            loss = nn.functional.cross_entropy(model(images), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.5, f"test accuracy {accuracy:.3f}"


def test_riders_sit_astride_with_their_feet_down_the_flanks():
    """A rider's thighs run down the flanks, the feet hang below the knees beside the horse's barrel (not inside it)."""
    for seed in range(8):
        scene = Scene()
        horse, rider = compose("both", np.random.default_rng(seed), scene, simple=True)
        axis = horse.marks["withers"] - horse.marks["tail"]
        side = normalize(np.cross(axis, [0.0, 1.0, 0.0]))  # horizontal, across the horse
        middle = (horse.marks["withers"] + horse.marks["tail"]) / 2
        for s in (-1, 1):
            foot, knee = rider.marks[f"foot{s}"], rider.marks[f"knee{s}"]
            assert foot[1] < knee[1] < rider.marks["top"][1], seed
            assert rider.marks["waist"][1] - knee[1] > 0.25, seed  # thighs down along the flanks, not forward like a chair's
            assert abs((foot - middle) @ side) > 0.25, (seed, s)  # the barrel's half-width is 0.29 m at most
            assert foot[1] > 0.5, seed  # in the stirrups, not on the ground


def test_horses_come_alone_and_in_herds():
    counts = [sum(f.kind == "horse" for f in compose("horse", np.random.default_rng(seed), Scene())) for seed in range(40)]
    assert counts.count(1) >= 12 and sum(c >= 2 for c in counts) >= 8 and max(counts) >= 3, counts


@pytest.mark.slow
def test_a_fifth_of_the_images_are_in_random_colours(renders):
    """Domain randomization: about one image in five (RANDOMIZED_SHARE) has every surface in random colours, in every class."""
    for label, done in renders.items():
        share = np.mean([info["randomized"] for _, _, info in done])
        assert 0.13 <= share <= 0.27, (label, share)  # 300 draws of p = 0.2: the standard error is 0.023


def test_render_mask_covers_exactly_the_figure():
    rendering = render_scene("horse", 3, 96)
    mask = np.asarray(rendering.mask, np.float32) / 255
    assert rendering.mask.size == rendering.image.size == (96, 96)
    assert abs(mask.mean() - rendering.info["figures"][0]["share"]) < 0.01
    assert 0 < (mask > 0.5).mean() < 1


def test_synth_writes_a_mask_per_image_and_the_scan_pairs_them(image_root):
    root = image_root(2, 80)
    images = scan_labeled_dataset(root, DEFAULT_CLASSES)  # _masks is not taken for a class folder
    assert len(images) == 6 and images.masked == 6
    for path, mask in zip(images.paths, images.masks):
        assert os.path.basename(mask) == os.path.basename(path).replace(".jpg", ".png") and "/_masks/" in mask
        assert Image.open(mask).mode == "L"
    unlabeled = scan_image_files(root)  # labeling a rendered folder labels the images, not their masks
    assert len(unlabeled) == 6 and unlabeled.skipped == 6 and all(p.endswith(".jpg") for p in unlabeled.paths)
    os.remove(images.masks[0])
    assert scan_labeled_dataset(root, DEFAULT_CLASSES).masks[0] == ""
