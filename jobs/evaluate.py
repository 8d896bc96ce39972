"""Ray job: Evaluate plates shard sets side by side (raw vs normalized): one report.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/evaluate.py ARGS...

ARGS are those of `raymmi evaluate` (`plates RAW NORM --out REPORT`; `raymmi evaluate plates
--help`). `--smoke-test` generates two tiny plates, normalizes them and evaluates raw against
normalized (written under `--out`, default a temporary folder) on whatever Ray it finds.
"""

from __future__ import annotations

import sys

from raymmi.smoke import job_main


def main(argv: list[str] | None = None) -> int:
    return job_main("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
