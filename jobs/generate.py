"""Ray job: Generate a seeded plates or cells shard set on a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/generate.py ARGS...

ARGS are those of `raymmi generate` (`raymmi generate --help`). `--smoke-test` runs the stage on
tiny data (written under `--out`, default a temporary folder) on whatever Ray it finds.
"""

from __future__ import annotations

import argparse
import sys

from raymmi.cli import main as raymmi_main
from raymmi.smoke import smoke_argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--smoke-test", action="store_true", help="tiny end-to-end run")
    parser.add_argument("--out", help="with --smoke-test: folder for its outputs")
    args, rest = parser.parse_known_args(argv)
    if args.smoke_test:
        return raymmi_main(smoke_argv("generate", args.out))
    if args.out is not None:
        rest += ["--out", args.out]
    return raymmi_main(["generate", *rest])


if __name__ == "__main__":
    sys.exit(main())
