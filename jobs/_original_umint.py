"""Run the ORIGINAL UMINT code (deeplearner87/UMINT, Keras) on inputs ``bench_models`` wrote.

    /tmp/tfvenv/bin/python jobs/_original_umint.py --src /tmp/umint-src --inputs IN.npz \
        --out OUT.npz --seeds 0,1,2,3,4 [--model umint|ae]

Imports ``umint`` (or ``autoencoder``) from ``SRC/Proposed`` only: nothing of it lives in this
repository. The protocol of the repository's ``Proposed/bmcite30k_UMINT.ipynb`` (and
``bmcite30k_AE.ipynb``): for each seed ``s``, ``train_test_split(test_size=0.2,
random_state=s)`` of the cells, ``CombinedEncoder([rna, adt], val, [128, 10], 64, 98, 1e-4,
1e-3, 25, 16)`` (``AE(z, val, 128, 64, 98, ...)`` on the concatenation for ``ae``), then the
encoder's embedding of every cell. ``IN.npz`` holds ``rna`` and ``adt`` (cells x features,
already preprocessed); ``OUT.npz`` gets ``embedding_<seed>`` and ``seconds_<seed>``.

Runs in the interpreter given to ``bench_models --umint-python`` (TensorFlow), not raymmi's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="a checkout of deeplearner87/UMINT")
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--model", choices=["umint", "ae"], default="umint")
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.join(args.src, "Proposed"))
    import numpy as np
    from sklearn.model_selection import train_test_split

    data = np.load(args.inputs)
    rna, adt = data["rna"], data["adt"]
    z = np.concatenate([rna, adt], axis=1)
    out = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        if args.model == "umint":
            import umint

            r_tr, r_te, a_tr, a_te = train_test_split(rna, adt, test_size=0.2, random_state=seed)
            encoder, _ = umint.CombinedEncoder(
                [r_tr, a_tr], [r_te, a_te], [128, 10], 64, 98, 1e-4, 1e-3, args.epochs, 16
            )
            seconds = time.perf_counter() - start
            embedding = encoder.predict([rna, adt], verbose=0)
        else:
            import autoencoder

            z_tr, z_te = train_test_split(z, test_size=0.2, random_state=seed)
            encoder, _ = autoencoder.AE(z_tr, z_te, 128, 64, 98, 1e-4, 1e-3, args.epochs, 16)
            seconds = time.perf_counter() - start
            embedding = encoder.predict(z, verbose=0)
        out[f"embedding_{seed}"] = np.asarray(embedding, dtype=np.float32)
        out[f"seconds_{seed}"] = np.float64(seconds)
        print(f"original {args.model} seed {seed}: {seconds:.1f} s", flush=True)
    np.savez(args.out, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
