"""`--decode device` against `--decode cpu`: the same labels, probabilities and error rows?

    python bench/decode_equivalence.py --model PKG [--data DIR ...] [--gpu]

Labels each folder twice with `cgi2real.stages.label.run` (whole pipeline, Ray included), once per mode,
and compares the tables row by row: label agreement, the largest and mean probability difference,
and whether the error rows are identical. Use a trained package: a random-init network turns a level of pixel
noise into any probability, which says nothing about the decoders.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cgi2real.core.config import LabelConfig  # noqa: E402
from cgi2real.stages.label import run  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
DEFAULT_DATA = [os.path.join(SHARED, "horse_or_human", "validation"), os.path.join(SHARED, "cgi2real_seed", "val")]


def compare(a: str, b: str) -> dict:
    t1 = pq.read_table(a).to_pandas().set_index("path").sort_index()
    t2 = pq.read_table(b).to_pandas().set_index("path").sort_index()
    assert list(t1.index) == list(t2.index), "the two tables must hold the same paths"
    ok = t1["error"].isna() & t2["error"].isna()
    probs = [c for c in t1.columns if c.startswith("p_")]
    diff = np.abs(t1.loc[ok, probs].to_numpy() - t2.loc[ok, probs].to_numpy())
    return {
        "rows": len(t1),
        "labeled": int(ok.sum()),
        "same_label": float((t1.loc[ok, "label"].astype(str) == t2.loc[ok, "label"].astype(str)).mean()),
        "within_0.05": float((diff.max(axis=1) <= 0.05).mean()),
        "max_dp": float(diff.max()) if diff.size else 0.0,
        "mean_dp": float(diff.mean()) if diff.size else 0.0,
        "same_errors": bool((t1["error"].fillna("") == t2["error"].fillna("")).all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained model package")
    parser.add_argument("--data", nargs="+", default=[d for d in DEFAULT_DATA if os.path.isdir(d)])
    parser.add_argument("--gpu", action="store_true", help="the model on the GPU (bf16, eager: the decoders are compared, not the compiler) in both runs; --decode device decodes there too")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="cgi2real-bench-decode-")
    for k, data in enumerate(args.data):
        tables = {}
        for mode in ("cpu", "device"):
            tables[mode] = os.path.join(tmp, f"{k}-{mode}")
            run(LabelConfig(source=data, model=args.model, out=tables[mode], decode=mode, use_gpu=args.gpu, compile=False))
        result = compare(tables["cpu"], tables["device"])
        print(f"{data}: {result}")


if __name__ == "__main__":
    main()
