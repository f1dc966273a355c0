"""How long a user waits for the answer to a bad input: every row of the README's bad-input table,
run as `cgi2real` runs (a fresh interpreter each time), --repeats times; the slowest and median
per command, interpreter start-up included, and `python -c pass` and `cgi2real --version` for scale.

    python bench/bad_inputs.py [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.bad_inputs import command_line, read_table, run_row, sandbox  # noqa: E402


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = read_table()
    with tempfile.TemporaryDirectory() as root:
        places = sandbox(os.path.join(root, "sandbox"))
        times, slowest = defaultdict(list), (0.0, "")
        for _ in range(args.repeats):
            for row, _answer in rows:
                answer = run_row(command_line(row, places), root)
                assert answer.code == 2 and not answer.torch and not answer.ray, (row, answer)
                times[row.split()[0]].append(answer.seconds)
                slowest = max(slowest, (answer.seconds, row))
        bare = min(wall([sys.executable, "-c", "pass"]) for _ in range(args.repeats))
        version = min(wall([sys.executable, "-m", "cgi2real", "--version"]) for _ in range(args.repeats))
    print(f"{len(rows)} rows x {args.repeats}: python -c pass {bare:.2f} s, cgi2real --version {version:.2f} s")
    print(f"{'command':10} {'rows':>5} {'median s':>9} {'max s':>7}")
    for command, seconds in sorted(times.items(), key=lambda kv: -max(kv[1])):
        print(f"{command:10} {len(seconds) // args.repeats:5} {statistics.median(seconds):9.2f} {max(seconds):7.2f}")
    print(f"slowest: {slowest[0]:.2f} s  cgi2real {slowest[1]}")


if __name__ == "__main__":
    main()
