"""A review page for a label table: what the model labeled, how sure it was, and what failed.

The counting columns (label, confidence, error, model) are read whole; the rows the page shows —
a seeded sample per class, the least confident, the errors — are then read alone, only their
Parquet row groups. Their images are read where the table says they are, in threads, and become
thumbnails beside a static `index.html` that opens from disk; an image that can no longer be read
becomes a placeholder tile with its reason, never a failure.
"""

import html
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from cgi2real.core.config import ReviewConfig
from cgi2real.core.errors import InputError
from cgi2real.formats.label_table import LabelTable, open_table
from cgi2real.formats.plots import confidence_histograms_png
from cgi2real.storage.locations import check_output, first_line, locate
from cgi2real.storage.reads import read_file

THUMB_PX = 192  # longest side of a thumbnail
THUMB_QUALITY = 85
READ_THREADS = 16  # images read at once (S3 requests wait on the network, not the CPU)
COUNT_COLUMNS = ["label", "confidence", "error", "model"]
THUMBS_FOLDER = "thumbs"
HISTOGRAM_FILE = "confidence.png"


@dataclass
class Counts:
    """The whole table's counting columns, one entry per row (row i of part file after part file)."""

    classes: list[str]
    label: np.ndarray  # (N,) int: index into classes, -1 when unlabeled
    confidence: np.ndarray  # (N,) float: NaN when unreadable
    error: pa.ChunkedArray  # (N,) string, null when labeled
    models: dict[str, int]
    part_rows: list[int]  # rows per part file, in order


@dataclass
class Tile:
    """One image on the page: its row, what the table says of it, and its thumbnail (or why none)."""

    row: int
    path: str
    label: str | None
    confidence: float | None
    probs: dict[str, float]
    error: str | None
    thumb: str | None = None  # the thumbnail's file name under THUMBS_FOLDER
    unreadable: str | None = None  # why the image could not be shown


def run(cfg: ReviewConfig) -> dict:
    """Write the review page of the table at cfg.table to cfg.out; return what it shows."""
    cfg.check()
    table, parts = open_table(cfg.table, cfg.s3_endpoint, "TABLE")
    out = locate(cfg.out, cfg.s3_endpoint)
    check_output(out, "--out", [("TABLE", table.folder)], "review page")
    counts = read_counts(table, parts)
    rng = np.random.default_rng(cfg.seed)
    picks = {
        "sample": {name: sample_rows(counts.label == k, cfg.per_class, rng) for k, name in enumerate(counts.classes)},
        "lowest": lowest_rows(counts, cfg.lowest),
        "errors": sample_rows(counts.error.is_valid().to_numpy(zero_copy_only=False), cfg.errors, rng),
    }
    wanted = np.unique(np.concatenate([*picks["sample"].values(), picks["lowest"], picks["errors"]]).astype(np.int64))
    summary = summarize(counts, table.folder.uri)
    try:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            tiles = read_tiles(table, parts, counts, wanted, pool.map)
            list(pool.map(lambda tile: write_thumbnail(tile, out, cfg.s3_endpoint), tiles.values()))
        out.child(HISTOGRAM_FILE).write_bytes(
            confidence_histograms_png({name: counts.confidence[counts.label == k] for k, name in enumerate(counts.classes)})
        )
        out.child("index.html").write_bytes(render_page(summary, picks, tiles, cfg).encode())
        out.child("summary.json").write_bytes(json.dumps(summary, indent=2).encode())
    except OSError as e:
        raise InputError(f"cannot write the review to {out.uri}: {first_line(e)}") from None
    shown = sum(t.thumb is not None for t in tiles.values())
    return {**summary, "page": out.child("index.html").uri, "thumbnails": shown, "placeholders": len(tiles) - shown}


def summarize_table(uri: str, s3_endpoint: str | None = None) -> dict:
    """`cgi2real summary`: the review page's counts of a label table, without the page."""
    table, parts = open_table(uri, s3_endpoint, "TABLE")
    return summarize(read_counts(table, parts), table.folder.uri)


def format_summary(s: dict) -> str:
    lines = [f"label table  {s['table']}: {s['rows']} rows in {s['files']} file(s)"]
    lines += [f"model        {model}: {n} rows" for model, n in s["models"].items()]
    lines.append(f"{'class':12} {'rows':>8} {'share':>7} {'mean confidence':>16}")
    for name, c in s["per_class"].items():
        confidence = f"{c['mean_confidence']:.3f}" if c["mean_confidence"] is not None else "-"
        lines.append(f"{name:12} {c['rows']:8} {c['rows'] / max(s['rows'], 1):7.1%} {confidence:>16}")
    n_errors = sum(s["errors"].values())
    lines.append(f"{'errors':12} {n_errors:8} {n_errors / max(s['rows'], 1):7.1%}" + (f"  ({', '.join(f'{r} {n}' for r, n in s['errors'].items())})" if n_errors else ""))
    return "\n".join(lines)


def read_counts(table: LabelTable, parts: list[str]) -> Counts:
    """The counting columns of every part file (read in threads), and how many rows each has."""
    try:
        meta = table.metadata(parts) or {}
        with ThreadPoolExecutor(READ_THREADS) as pool:
            pieces = list(pool.map(lambda part: table.read([part], COUNT_COLUMNS), parts))
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read the label table at {table.folder.uri}: {first_line(e)}") from None
    t = pa.concat_tables(pieces)
    classes = meta.get("classes") or sorted(set(t["label"].cast(pa.string()).drop_null().to_pylist()))
    label = pc.index_in(t["label"].cast(pa.string()), value_set=pa.array(classes, pa.string()))
    models = {row["model"]: row["count_all"] for row in t.group_by("model").aggregate([([], "count_all")]).to_pylist()}
    return Counts(
        classes=list(classes),
        label=label.fill_null(-1).to_numpy(),
        confidence=t["confidence"].cast(pa.float64()).fill_null(np.nan).to_numpy(),
        error=t["error"],
        models=models,
        part_rows=[p.num_rows for p in pieces],
    )


def sample_rows(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `k` rows where `mask` holds, drawn without replacement (all of them if fewer)."""
    rows = np.flatnonzero(mask)
    return rows if len(rows) <= k else np.sort(rng.choice(rows, size=k, replace=False))


def lowest_rows(counts: Counts, k: int) -> np.ndarray:
    """The `k` labeled rows of least confidence, least first."""
    rows = np.flatnonzero(counts.label >= 0)
    if len(rows) > k:
        rows = rows[np.argpartition(counts.confidence[rows], k)[:k]] if k else rows[:0]
    return rows[np.argsort(counts.confidence[rows], kind="stable")]


def summarize(counts: Counts, uri: str) -> dict:
    """Rows per class with their mean confidence, rows per error reason, rows per model."""
    n = len(counts.label)
    per_class = {}
    for k, name in enumerate(counts.classes):
        mine = counts.confidence[counts.label == k]
        per_class[name] = {"rows": int(len(mine)), "mean_confidence": float(mine.mean()) if len(mine) else None}
    reasons = pc.list_element(pc.split_pattern(counts.error.drop_null(), ":", max_splits=1), 0)
    errors = {row["values"]: row["counts"] for row in pc.value_counts(reasons).to_pylist()} if len(reasons) else {}
    return {
        "table": uri,
        "rows": n,
        "files": len(counts.part_rows),
        "per_class": per_class,
        "errors": dict(sorted(errors.items(), key=lambda item: -item[1])),
        "models": counts.models,
    }


def read_tiles(table: LabelTable, parts: list[str], counts: Counts, rows: np.ndarray, map_=map) -> dict[int, Tile]:
    """The shown rows' paths and probabilities, reading only the row groups that hold them
    (one part file per call of `map_`)."""
    columns = ["path", "label", "confidence", "error", *(f"p_{name}" for name in counts.classes)]
    starts = np.cumsum([0, *counts.part_rows])
    wanted = [(i, rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]) for i in range(len(parts))]
    wanted = [(i, mine) for i, mine in wanted if len(mine)]
    tiles = {}
    for (i, mine), picked in zip(wanted, map_(lambda job: _read_rows(table, parts[job[0]], job[1], columns), wanted)):
        for row, values in zip(mine + starts[i], picked):
            tiles[int(row)] = Tile(
                row=int(row), path=values["path"], label=values["label"], confidence=values["confidence"],
                probs={name: values[f"p_{name}"] for name in counts.classes if values[f"p_{name}"] is not None},
                error=values["error"],
            )
    return tiles


def _read_rows(table: LabelTable, part: str, rows: np.ndarray, columns: list[str]) -> list[dict]:
    """`rows` (sorted offsets in the file `part`) of `columns`, from the row groups holding them."""
    try:
        with table.folder.fs.open_input_file(part) as f:
            parquet = pq.ParquetFile(f)
            group_starts = np.cumsum([0, *(parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups))])
            groups = sorted(set(np.searchsorted(group_starts, rows, side="right") - 1))
            data = parquet.read_row_groups(groups, columns=columns)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read the label table file {table.folder.uri_of(part)}: {first_line(e)}") from None
    offsets = np.concatenate([np.arange(group_starts[g], group_starts[g + 1]) for g in groups])
    return data.take(pa.array(np.searchsorted(offsets, rows))).to_pylist()


def write_thumbnail(tile: Tile, out, s3_endpoint: str | None) -> None:
    """Read the tile's image where the table says it is and write its thumbnail. An image that
    cannot be read or decoded gets its reason instead (a placeholder on the page); a thumbnail
    that cannot be written fails the review (OSError)."""
    from cgi2real.imaging.presets import ImageError, decode_image  # torch: only when there are thumbnails to make

    try:
        where = locate(tile.path, s3_endpoint)
    except InputError as e:  # a path this machine cannot read (another scheme)
        tile.unreadable = first_line(e)
        return
    data, error = read_file(where.fs, where.path)  # every failure comes back as a reason
    if error:
        tile.unreadable = error
        return
    try:
        img = decode_image(data, draft_size=THUMB_PX)
        img.thumbnail((THUMB_PX, THUMB_PX), Image.Resampling.BICUBIC)
    except ImageError as e:
        tile.unreadable = str(e)
        return
    name = f"{tile.row}.jpg"
    out.child(THUMBS_FOLDER, name).write_bytes(_jpeg(img))
    tile.thumb = name


def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=THUMB_QUALITY)
    return buffer.getvalue()


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212529; }
h1 { font-size: 20px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; }
.meta { color: #6c757d; } table.counts { border-collapse: collapse; margin: 8px 0; }
table.counts td, table.counts th { padding: 3px 12px; border-bottom: 1px solid #dee2e6; text-align: right; }
table.counts td:first-child, table.counts th:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 192px; } figure img { display: block; width: 192px; height: 192px; object-fit: contain; background: #f8f9fa; }
figcaption { font-size: 12px; word-break: break-all; } .path { color: #868e96; }
.placeholder { width: 192px; height: 144px; background: #f1f3f5; border: 1px dashed #adb5bd; display: flex;
  align-items: center; justify-content: center; text-align: center; font-size: 12px; color: #495057; }
.bad { color: #c92a2a; }
"""


def render_page(summary: dict, picks: dict, tiles: dict[int, Tile], cfg: ReviewConfig) -> str:
    """The review page: counts, the confidence histograms, then the tiles by section."""
    e = html.escape
    rows = max(summary["rows"], 1)
    class_rows = "".join(
        f'<tr><td>{e(name)}</td><td class="count" data-class="{e(name)}">{c["rows"]}</td><td>{c["rows"] / rows:.1%}</td>'
        f'<td>{_number(c["mean_confidence"])}</td></tr>'
        for name, c in summary["per_class"].items()
    )
    error_rows = "".join(
        f'<tr><td>{e(reason)}</td><td class="count" data-error="{e(reason)}">{n}</td><td>{n / rows:.1%}</td></tr>'
        for reason, n in summary["errors"].items()
    ) or '<tr><td colspan="3">none</td></tr>'
    models = ", ".join(f"{e(model)} ({n} rows)" for model, n in summary["models"].items())
    sections = []
    for name, chosen in picks["sample"].items():
        total = summary["per_class"][name]["rows"]
        sections.append(_section(f"{name}: {len(chosen)} of {total} at random", f"sample-{name}", [tiles[int(r)] for r in chosen], False))
    labeled = sum(c["rows"] for c in summary["per_class"].values())
    sections.append(_section(f"Least confident: {len(picks['lowest'])} of {labeled} labeled", "lowest", [tiles[int(r)] for r in picks["lowest"]], True))
    n_errors = sum(summary["errors"].values())
    sections.append(_section(f"Errors: {len(picks['errors'])} of {n_errors}", "errors", [tiles[int(r)] for r in picks["errors"]], True))
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Review of {e(summary['table'])}</title><style>{STYLE}</style></head>
<body>
<h1>Label table {e(summary['table'])}</h1>
<p class="meta"><span id="rows" data-rows="{summary['rows']}">{summary['rows']}</span> rows in {summary['files']} file(s);
model {models}; sample seed {cfg.seed}; written {made} by <code>cgi2real review</code>.</p>
<h2>Rows per class</h2>
<table class="counts"><tr><th>class</th><th>rows</th><th>share</th><th>mean confidence</th></tr>{class_rows}</table>
<h2>Rows per error reason</h2>
<table class="counts"><tr><th>reason</th><th>rows</th><th>share</th></tr>{error_rows}</table>
<h2>Confidence per class</h2>
<img id="histogram" src="{HISTOGRAM_FILE}" alt="histograms of confidence per class">
{''.join(sections)}
</body></html>
"""


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _section(title: str, anchor: str, tiles: list[Tile], every_class: bool) -> str:
    body = "".join(_tile(t, every_class) for t in tiles) or "<p>none</p>"
    return f'<h2 id="{html.escape(anchor)}">{html.escape(title)}</h2>\n<div class="grid">{body}</div>\n'


def _tile(tile: Tile, every_class: bool) -> str:
    e = html.escape
    if tile.thumb:
        picture = f'<img class="thumb" src="{THUMBS_FOLDER}/{e(tile.thumb)}" alt="{e(tile.path)}">'
    else:
        picture = f'<div class="placeholder">cannot show: {e(tile.unreadable or "?")}</div>'
    if tile.error:
        what = f'<span class="bad">{e(tile.error)}</span>'
    else:
        what = f"<b>{e(tile.label or '-')}</b> {tile.confidence:.3f}"
    if every_class and tile.probs:
        what += "<br>" + " · ".join(f"{e(name)} {p:.2f}" for name, p in tile.probs.items())
    return f'<figure>{picture}<figcaption>{what}<br><span class="path">{e(tile.path)}</span></figcaption></figure>'
