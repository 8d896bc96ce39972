"""Ray job: Train a model (SAILERX, UMINT, AE ...) with Ray Train on a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/train.py ARGS...

ARGS are those of `raymmi train` (`raymmi train --help`). `--smoke-test` runs the stage on
tiny data (written under `--out`, default a temporary folder) on whatever Ray it finds.
"""

from __future__ import annotations

import sys

from raymmi.smoke import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
