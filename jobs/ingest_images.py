"""Ray job: profile Cell Painting fields (a LoadData CSV) into a ``plates`` shard set.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/ingest_images.py \
        LOAD_DATA.csv --out DIR --nuclei-channel DNA --cell-channel AGP [--aggregate median]

ARGS are those of `raymmi ingest images` (`raymmi ingest images --help`). `--smoke-test`
generates two small fields and profiles them (under `--out`, default a temporary folder).
"""

from __future__ import annotations

import sys

from raymmi.smoke import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("ingest images", argv)


if __name__ == "__main__":
    sys.exit(main())
