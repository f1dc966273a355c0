"""The README's table of bad inputs ("Bad input, answered"), walked as a user meets it.

Each row is a command line over a few placeholders (DATA, PKG, ...) that `sandbox` makes real. It
runs in a fresh interpreter, as `cgi2real` does, which reports after the answer whether torch had
been imported: the options, inputs and outputs are checked before anything heavy loads.
`bench/bad_inputs.py` times the same rows.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
# A fresh interpreter runs the CLI, then says on a pipe whether torch was imported and when the answer came.
RUNNER = """
import os, sys, time, json
start = time.perf_counter()
from cgi2real.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
else:
    code = 0
with os.fdopen(int(os.environ["BAD_INPUT_REPORT_FD"]), "w") as report:
    json.dump({"code": code, "torch": "torch" in sys.modules, "ray": "ray" in sys.modules, "seconds": time.perf_counter() - start}, report)
"""


@dataclass
class Answer:
    code: int
    stderr: list[str]  # non-empty lines
    torch: bool  # torch was imported before the answer
    ray: bool
    seconds: float  # from the interpreter's start to the exit, as the user waits for it


def read_table(readme: Path = README) -> list[tuple[str, str]]:
    """(command line, answer) per row of the README's bad-input table, in order."""
    text = readme.read_text()
    body = text[text.index("<!-- bad-inputs -->"):text.index("<!-- /bad-inputs -->")]
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`cgi2real "):
            rows.append((cells[0].strip("`").removeprefix("cgi2real "), cells[1].strip("`").replace("\\|", "|")))
    return rows


def sandbox(root: str) -> dict[str, str]:
    """The placeholders' places under `root`: a labeled dataset, a folder of images, too few images,
    a model package, a label table, an evaluation report, a plain file, an empty folder, nothing."""
    from cgi2real.stages.synth import write_dataset
    from tests.labeling import make_package
    from tests.stages.test_review import make_table

    places = {name: os.path.join(root, name.lower()) for name in ("DATA", "IMAGES", "FEW", "PKG", "TABLE", "REPORT", "FILE", "EMPTY", "NOPE", "NEW")}
    write_dataset(places["DATA"], 24, size=96, seed=0, processes=2)
    make_table(places["TABLE"], places["IMAGES"], n=70, parts=1)
    write_dataset(places["FEW"], 3, size=96, seed=1)
    make_package(places["PKG"], places["DATA"])
    os.makedirs(places["REPORT"])
    Path(places["REPORT"], "report.json").write_text("{}")
    Path(places["FILE"]).write_text("not a folder\n")
    os.makedirs(places["EMPTY"])
    return places


def command_line(row: str, places: dict[str, str]) -> list[str]:
    """The row's arguments with each placeholder (a whole word, or before a '/') made real."""
    pattern = re.compile(r"\b(" + "|".join(places) + r")\b")
    return [pattern.sub(lambda m: places[m.group(1)], arg) for arg in shlex.split(row)]


def in_words(text: str, places: dict[str, str]) -> str:
    """`text` with the sandbox's paths written as their placeholders again."""
    for name, path in sorted(places.items(), key=lambda p: -len(p[1])):
        text = text.replace(path, name)
    return text


def run_row(args: list[str], cwd: str) -> Answer:
    read, write = os.pipe()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "BAD_INPUT_REPORT_FD": str(write)}  # never join a cluster
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, pass_fds=(write,),
    )
    seconds = time.perf_counter() - start
    os.close(write)
    with os.fdopen(read) as f:
        report = json.loads(f.read() or "{}")
    return Answer(report.get("code", done.returncode), [line for line in done.stderr.splitlines() if line.strip()], report.get("torch", True), report.get("ray", True), seconds)
