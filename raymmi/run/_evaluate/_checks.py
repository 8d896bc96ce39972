"""Input checks of ``raymmi evaluate plates``: set names, batch/label keys, matching sets."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from raymmi.io import ShardSet
from raymmi.schema import NEGCON, RaymmiError

# --- checks ------------------------------------------------------------------------------------


def _set_names(sources: Sequence[str]) -> list[str]:
    names: list[str] = []
    for src in sources:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", posixpath.basename(src.rstrip("/")) or "set")
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _check_inputs(sets: Sequence[ShardSet], *, batch_key: str, label_key: str) -> None:
    for s in sets:
        meta = s.manifest.metadata
        if NEGCON not in meta:
            msg = (
                f"input {s.uri!r} has no {NEGCON} column, so no negcon wells; re-ingest with "
                "--negcon QUERY (e.g. \"Metadata_Compound == 'DMSO'\")"
            )
            raise RaymmiError(msg)
        for arg, key, hint in (
            ("--batch-key", batch_key, "batch"),
            ("--label-key", label_key, "compound"),
        ):
            if key not in meta:
                like = [c for c in meta if hint in c.lower() or "jcp" in c.lower()]
                msg = (
                    f"{arg} {key!r} is not a column of {s.uri!r}; columns that may fit: "
                    f"{like or list(meta)}; pass {arg} COLUMN"
                )
                raise RaymmiError(msg)
    first = sets[0]
    for s in sets[1:]:
        a, b = set(first.manifest.plates), set(s.manifest.plates)
        if a != b:
            msg = (
                f"inputs {first.uri!r} and {s.uri!r} hold different plates (only in the first: "
                f"{sorted(a - b)[:5]}, only in the second: {sorted(b - a)[:5]}); compare "
                "versions of the same plates, or evaluate them in separate reports"
            )
            raise RaymmiError(msg)
        spherized = "spherize" in (
            first.manifest.extra.get("method"),
            s.manifest.extra.get("method"),
        )
        fa, fb = first.manifest.features, s.manifest.features
        if fa != fb and not spherized:
            only_a = [f for f in fa if f not in set(fb)]
            only_b = [f for f in fb if f not in set(fa)]
            what = (
                f"only in the first: {only_a[:5]}, only in the second: {only_b[:5]}"
                if only_a or only_b
                else "same names in a different order"
            )
            msg = (
                f"inputs {first.uri!r} and {s.uri!r} have different features ({len(fa)} vs "
                f"{len(fb)}; {what}); compare versions of the same feature set"
            )
            raise RaymmiError(msg)
