"""Ray job: any raymmi stage on a Ray cluster (`raymmi.stages.STAGES` lists them).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/stage.py NAME ARGS...

NAME is the stage (`normalize`, `ingest plates`, `evaluate plates`, `tune` ...) and ARGS are
those of `raymmi NAME` (`raymmi NAME --help`). `--smoke-test` runs the stage on tiny data
(written under `--out`, default a temporary folder) on whatever Ray it finds. For `tune` and
`train`, `--out` must be storage every node sees (a shared file system); a killed search
continues with the same command plus `--resume`.
"""

from __future__ import annotations

import sys

from raymmi.smoke import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main(argv)


if __name__ == "__main__":
    sys.exit(main())
