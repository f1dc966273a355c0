"""Ray job entrypoint for training: the same arguments as `cgi2real train`.

    ray job submit --working-dir . -- python jobs/train.py --data DATA [--data DATA2 ...] --out PKG [options]

Inside a Ray job RAY_ADDRESS is set, so training joins that cluster instead of starting one.
"""

import sys

from cgi2real.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
