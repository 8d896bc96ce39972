"""Ray job: Ingest profile tables, CellProfiler folders or h5ad/h5mu files into a shard set.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/ingest.py ARGS...

ARGS are those of `raymmi ingest` (`raymmi ingest --help`). `--smoke-test` runs the stage on
tiny data (written under `--out`, default a temporary folder) on whatever Ray it finds.
"""

from __future__ import annotations

import sys

from raymmi.smoke import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
