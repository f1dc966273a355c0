"""The review page of a label table: what it counts and shows, read from local and S3 tables, and
how it looks in a real browser (headless Chromium)."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cgi2real.core.config import ReviewConfig
from cgi2real.formats.label_table import LOW_CONFIDENCE, LabelTable, to_table
from cgi2real.stages.review import THUMBS_FOLDER, read_counts, read_tiles, run
from cgi2real.storage.locations import locate
from tests.conftest import invoke, upload_folder

CLASSES = ["both", "horse", "human"]


def make_table(folder: str, images: str, n: int = 90, parts: int = 3, seed: int = 0) -> list[str]:
    """A label table over `n` generated images in `parts` files: labeled rows of every class with
    spread-out confidences, unreadable rows and low-confidence rows; return the image paths."""
    rng = np.random.default_rng(seed)
    os.makedirs(images, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(images, f"img_{i:03d}.{'png' if i % 7 == 0 else 'jpg'}")
        Image.new("RGB", (int(rng.integers(40, 160)), int(rng.integers(40, 160))), tuple(int(v) for v in rng.integers(0, 255, 3))).save(path)
        paths.append(path)
    probs = rng.dirichlet([1.5, 1.5, 1.5], size=n).astype(np.float32)
    errors = [("truncated" if i % 11 == 3 else "cannot decode: bad Huffman code" if i % 13 == 5 else None) for i in range(n)]
    probs[[e is not None for e in errors]] = np.nan
    table = LabelTable(locate(folder))
    for chunk in np.array_split(np.arange(n), parts):
        rows = to_table([paths[i] for i in chunk], probs[chunk], [errors[i] for i in chunk], np.zeros(len(chunk), np.int64), CLASSES, "m1", abstain_below=0.45)
        table.commit(rows)
    return paths


def table_truth(folder: str):
    t = pq.read_table(folder)
    labels = t["label"].cast("string").to_pylist()
    counts = {name: labels.count(name) for name in CLASSES}
    reasons = [e.split(":")[0] for e in t["error"].drop_null().to_pylist()]
    return t, counts, {r: reasons.count(r) for r in set(reasons)}


def test_review_counts_samples_and_lowest_follow_the_table(tmp_path):
    make_table(str(tmp_path / "table"), str(tmp_path / "images"))
    removed = sorted(p for p in os.listdir(tmp_path / "images"))[::5]  # images gone since labeling: placeholders
    for name in removed:
        os.remove(tmp_path / "images" / name)
    shown = run(ReviewConfig(table=str(tmp_path / "table"), out=str(tmp_path / "review"), per_class=4, lowest=6, errors=5, seed=3))
    t, counts, reasons = table_truth(str(tmp_path / "table"))
    assert shown["rows"] == t.num_rows
    assert {name: c["rows"] for name, c in shown["per_class"].items()} == counts
    assert shown["errors"] == reasons and reasons[LOW_CONFIDENCE] > 0
    page = (tmp_path / "review" / "index.html").read_text()
    labeled = t.filter(pc.is_valid(t["label"]))
    lowest = labeled.sort_by("confidence").slice(0, 6)["path"].to_pylist()
    lowest_section = page.split('id="lowest"')[1].split('id="errors"')[0]
    assert [p for p in lowest if p in lowest_section] == lowest  # all six, and only in that section's order
    assert [lowest_section.index(p) for p in lowest] == sorted(lowest_section.index(p) for p in lowest)
    for name in CLASSES:
        section = page.split(f'id="sample-{name}"')[1].split("<h2")[0]
        assert section.count("<figure>") == min(4, counts[name])
        assert section.count(f"<b>{name}</b>") == min(4, counts[name])
    # every shown image is a thumbnail or, when its file is gone, a placeholder saying why
    thumbs = os.listdir(tmp_path / "review" / THUMBS_FOLDER)
    assert shown["thumbnails"] == len(thumbs) > 0
    assert shown["placeholders"] == page.count('class="placeholder"') > 0
    assert page.count("cannot show: file not found") == shown["placeholders"]
    assert (tmp_path / "review" / "confidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_seed_picks_the_sample(tmp_path):
    make_table(str(tmp_path / "table"), str(tmp_path / "images"), n=120)
    pages = {}
    for seed in (1, 1, 2):
        out = tmp_path / f"review{seed}"
        run(ReviewConfig(table=str(tmp_path / "table"), out=str(out), per_class=3, lowest=0, errors=0, seed=seed))
        pages.setdefault(seed, []).append(sorted(os.listdir(out / THUMBS_FOLDER)))
    assert pages[1][0] == pages[1][1]
    assert pages[1][0] != pages[2][0]


def test_review_reads_an_s3_table_of_s3_images(tmp_path, s3_client, bucket, s3_endpoint):
    make_table(str(tmp_path / "table"), str(tmp_path / "images"), n=30, parts=2)
    upload_folder(s3_client, str(tmp_path / "images"), bucket, "images")
    # the same table, pointing at the uploaded images
    t = pq.read_table(str(tmp_path / "table"))
    s3_paths = [f"s3://{bucket}/images/{os.path.basename(p)}" for p in t["path"].to_pylist()]
    table = LabelTable(locate(f"s3://{bucket}/labels", s3_endpoint))
    table.commit(t.set_column(0, "path", pc.cast(s3_paths, "string")).replace_schema_metadata(t.schema.metadata))
    shown = run(ReviewConfig(table=f"s3://{bucket}/labels", out=str(tmp_path / "review"), per_class=2, s3_endpoint=s3_endpoint))
    local = run(ReviewConfig(table=str(tmp_path / "table"), out=str(tmp_path / "local-review"), per_class=2))
    # the same page as from the local table: the same rows drawn, every one of them with its thumbnail
    assert shown["rows"] == local["rows"] == 30 and shown["placeholders"] == local["placeholders"] == 0
    assert shown["thumbnails"] == local["thumbnails"] == len(os.listdir(tmp_path / "review" / THUMBS_FOLDER)) >= 6


def test_review_refuses_a_folder_that_is_not_a_label_table(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("review", tmp_path / "empty", "--out", tmp_path / "review", code=2)
    assert "is not a label table (no part-*.parquet files)" in result.output and "Traceback" not in result.output
    missing = invoke("review", tmp_path / "missing", "--out", tmp_path / "review", code=2)
    assert f"TABLE {tmp_path / 'missing'} does not exist" in missing.output


def _browser():
    """A headless Chromium driven by WebDriver, or None where Chromium is not installed."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CGI2REAL_REQUIRE_BROWSER"):
            pytest.fail("CGI2REAL_REQUIRE_BROWSER is set but chromium or chromedriver is missing")
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


@pytest.mark.browser
def test_the_page_loads_every_thumbnail_in_a_browser_and_shows_the_table_counts(tmp_path):
    make_table(str(tmp_path / "table"), str(tmp_path / "images"))
    os.remove(tmp_path / "images" / "img_004.jpg")
    result = invoke("review", tmp_path / "table", "--out", tmp_path / "review", "--per-class", 30, "--lowest", 10, "--errors", 100)
    assert "review page: " in result.output and "placeholders" in result.output
    _, counts, reasons = table_truth(str(tmp_path / "table"))
    browser = _browser()
    try:
        browser.get((tmp_path / "review" / "index.html").as_uri())
        images = browser.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        assert images and all(ok for _, ok in images), [src for src, ok in images if not ok]
        thumbs = {src.split("/")[-1] for src, _ in images if src.startswith(THUMBS_FOLDER)}
        assert thumbs == set(os.listdir(tmp_path / "review" / THUMBS_FOLDER))
        shown = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('td[data-class]')].map(td => [td.dataset.class, +td.textContent]))"
        )
        assert shown == counts
        shown_errors = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('td[data-error]')].map(td => [td.dataset.error, +td.textContent]))"
        )
        assert shown_errors == reasons
        assert browser.execute_script("return document.querySelectorAll('.placeholder').length") >= 1
    finally:
        browser.quit()


def test_shown_rows_are_read_from_the_row_groups_that_hold_them(tmp_path):
    """Rows picked across files and row groups come back as the table has them."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "table"
    folder.mkdir()
    written = []
    for part in range(2):
        n = 95 if part == 0 else 40
        probs = rng.dirichlet([1, 1, 1], size=n).astype(np.float32)
        rows = to_table([f"/nowhere/{part}_{i}.jpg" for i in range(n)], probs, [None] * n, np.zeros(n, np.int64), CLASSES, "m1")
        pq.write_table(rows, folder / f"part-r-{part:05d}.parquet", row_group_size=10)  # 10 groups, then 4
        written.append(rows)
    everything = pa.concat_tables(written)
    table = LabelTable(locate(str(folder)))
    parts = table.part_files()
    counts = read_counts(table, parts)
    assert counts.part_rows == [95, 40]
    rows = np.array([0, 9, 10, 57, 94, 95, 96, 120, 134])
    tiles = read_tiles(table, parts, counts, rows)
    expected = everything.take(pa.array(rows)).to_pylist()
    assert [tiles[int(r)].path for r in rows] == [e["path"] for e in expected]
    assert [tiles[int(r)].probs["horse"] for r in rows] == [e["p_horse"] for e in expected]
