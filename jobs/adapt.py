"""Ray job entrypoint for adaptation: the same arguments as `cgi2real adapt`.

    ray job submit --working-dir . -- python jobs/adapt.py --model PKG --data s3://bucket/images --out s3://bucket/pkg-adapted

Inside a Ray job RAY_ADDRESS is set, so adaptation joins that cluster instead of starting one.
"""

import sys

from cgi2real.cli import main

if __name__ == "__main__":
    main(["adapt", *sys.argv[1:]])
