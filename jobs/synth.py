"""Ray job entrypoint for rendering CGI training images: the same arguments as `cgi2real synth`.

    ray job submit --working-dir . -- python jobs/synth.py --out s3://bucket/cgi --per-class 10000

Inside a Ray job RAY_ADDRESS is set, so rendering joins that cluster instead of starting one.
"""

import sys

from cgi2real.cli import main

if __name__ == "__main__":
    main(["synth", *sys.argv[1:]])
