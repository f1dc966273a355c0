"""Ray job entrypoint for labeling: the same arguments as `cgi2real label`.

    ray job submit --working-dir . -- python jobs/label.py s3://bucket/images --model PKG --out s3://bucket/labels

Inside a Ray job RAY_ADDRESS is set, so labeling joins that cluster instead of starting one.
"""

import sys

from cgi2real.cli import main

if __name__ == "__main__":
    main(["label", *sys.argv[1:]])
