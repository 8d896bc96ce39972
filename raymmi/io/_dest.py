"""Claim an output before any work: checks, an exclusive lock, crash recovery, stage-then-swap.

Every stage that writes (a shard set, a training/search/task folder, an exported file) claims
its destination with :func:`claim_output` before Ray starts:

1. **Checks that need no data**: the destination is not, does not contain and is not inside one
   of the stage's inputs; it does not exist unless ``overwrite`` (or ``exists_ok``: a resumable
   training run); it is of the right type (folder or file).
2. **A lock** ``.<name>.lock`` beside the destination, created with ``O_EXCL`` and holding the
   writer's pid, host, process start and wall-clock start. A second writer is refused at once,
   naming the holder. A lock whose process is gone (same host, pid dead or reused) is taken over
   with a note.
3. **Recovery** of a crashed writer's leftovers, under the lock: staging folders
   ``.<name>.tmp-*`` are dead and removed; an ``--overwrite`` swap interrupted between its two
   renames (only ``.<name>.old-*`` left, no ``<name>``) is finished when a complete staged copy
   exists (it holds its ``marker``, e.g. ``_manifest.json``), otherwise the old output is put
   back. Each action is printed as a ``raymmi: note:`` line.
4. **Stage then swap**: with ``overwrite`` on an existing destination the work goes to a staging
   sibling (:func:`work_dir`), and :meth:`Claim.commit` swaps it into place: the old output is
   removed only after the new one is complete.

Only local paths are claimed this way; on object stores (``s3://``, ``gs://``) the manifest
written last remains the only commit marker and concurrent writers are the caller's business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from raymmi.schema import MANIFEST_NAME, RaymmiError

__all__ = [
    "Claim",
    "check_out_overlap",
    "claim_output",
    "claiming",
    "held",
    "is_local",
    "lock_path",
    "swap_into_place",
    "work_dir",
]

_CLAIMS: dict[str, Claim] = {}
F = TypeVar("F", bound=Callable[..., Any])


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a local path (``file://`` included)."""
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> Path:
    text = uri.removeprefix("file://")
    return Path(os.path.abspath(os.path.expanduser(text))).resolve()


def lock_path(path: Path) -> Path:
    """The lock file of destination ``path``."""
    return path.parent / f".{path.name}.lock"


def check_out_overlap(out: str, inputs: Iterable[str | None], *, flag: str = "--out") -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs``.

    Raises
    ------
    RaymmiError
        Naming the input and the fix (another ``--out``).
    """
    if not is_local(out):
        targets = [i.rstrip("/") for i in inputs if i and not is_local(i)]
        o = out.rstrip("/")
        for i in targets:
            if o == i or o.startswith(i + "/") or i.startswith(o + "/"):
                msg = f"{flag} {out!r} overlaps the input {i!r}; choose an {flag} outside it"
                raise RaymmiError(msg)
        return
    target = _local_path(out)
    for given in inputs:
        if not given or not is_local(given):
            continue
        source = _local_path(given)
        if target == source:
            what = "is the input"
        elif source in target.parents:
            what = "is inside the input"
        elif target in source.parents:
            what = "contains the input"
        else:
            continue
        msg = (
            f"{flag} {out!r} {what} {given!r}; an output may not replace or hold what it reads: "
            f"choose an {flag} outside it"
        )
        raise RaymmiError(msg)


def _proc_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell: assume it runs
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _proc_start(pid)
    return start is None or holder.get("proc_start") in (None, start)


def _note(text: str) -> None:
    print(f"raymmi: note: {text}", file=sys.stderr, flush=True)


def _holder_text(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" + (
        f", {holder['command']}" if holder.get("command") else ""
    )


def _acquire(lock: Path, out: str, flag: str) -> dict:
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "proc_start": _proc_start(os.getpid()),
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(sys.argv[:3])[:120],
    }
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if not holder:  # being written this instant, or empty garbage
                age = time.time() - _mtime(lock)
                if age < 5:
                    time.sleep(0.05)
                    continue
            elif _alive(holder):
                msg = (
                    f"{flag} {out!r} is being written by another run ({_holder_text(holder)}); "
                    f"wait for it to finish or choose another {flag} (if that process is gone "
                    f"for good, delete {lock})"
                )
                raise RaymmiError(msg) from None
            stale = lock.with_name(f"{lock.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(lock, stale)
            except FileNotFoundError:
                continue  # another run took it over first: try again
            stale.unlink(missing_ok=True)
            _note(
                f"took over the lock of {out} left by a run that is gone "
                f"({_holder_text(holder) if holder else 'unreadable lock file'})"
            )
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me
    msg = f"could not take the lock {lock} of {flag} {out!r}; retry"
    raise RaymmiError(msg)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _recover(path: Path, marker: str | None) -> list[str]:
    """Clean up after a crashed writer of ``path`` (the caller holds the lock)."""
    done: list[str] = []
    if not path.parent.is_dir():
        return done
    tmps = sorted(path.parent.glob(f".{path.name}.tmp-*"), key=_mtime)
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=_mtime)
    if olds and not os.path.lexists(path):
        complete = [t for t in tmps if marker is not None and (t / marker).is_file()]
        if complete:
            new = complete[-1]
            os.rename(new, path)
            tmps.remove(new)
            done.append(
                f"finished an interrupted --overwrite commit of {path}: moved the complete new "
                f"output {new.name} into place and removed the old one"
            )
        else:
            os.rename(olds[-1], path)
            done.append(
                f"restored {path} from {olds[-1].name}: an --overwrite commit was interrupted "
                "before the new output was complete"
            )
            olds = olds[:-1]
    for old in olds:
        _remove(old)
        done.append(f"removed {old.name}, the old output left by an interrupted commit of {path}")
    for tmp in tmps:
        _remove(tmp)
        done.append(f"removed {tmp.name}, the staging folder of an interrupted run on {path}")
    for line in done:
        _note(line)
    return done


def swap_into_place(staging: Path, path: Path) -> None:
    """Move ``staging`` to ``path``; an existing ``path`` is removed only after the swap."""
    if os.path.lexists(path):
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(path, old)
        os.rename(staging, path)
        _remove(old)
    else:
        os.rename(staging, path)


@dataclasses.dataclass
class Claim:
    """A held destination: see :func:`claim_output`."""

    uri: str
    path: Path
    overwrite: bool
    kind: str
    marker: str | None
    holder: dict
    recovered: list[str]
    staging: Path | None = None
    committed: bool = False
    depth: int = 1

    def work_dir(self) -> Path:
        """Where to write: ``path`` itself, or a fresh staging sibling when replacing it.

        Only folder destinations; the staging folder is created on first call.
        """
        if not (self.overwrite and os.path.lexists(self.path)):
            return self.path
        if self.staging is None:
            self.staging = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
            self.staging.mkdir()
        return self.staging

    def commit(self) -> None:
        """Swap the staged output into place (no-op when the work went to ``path`` itself)."""
        if self.staging is not None and not self.committed:
            swap_into_place(self.staging, self.path)
        self.committed = True

    def abort(self) -> None:
        """Remove the staged output, if any; ``path`` is left as it was."""
        if self.staging is not None and not self.committed:
            _remove(self.staging)
            self.staging = None


def held(uri: str) -> Claim | None:
    """The claim this process holds on ``uri``, if any."""
    if not is_local(uri):
        return None
    return _CLAIMS.get(str(_local_path(uri)))


def work_dir(uri: str) -> Path:
    """Where a stage should write ``uri``'s folder: its claim's work dir, else the path."""
    claim = held(uri)
    return claim.work_dir() if claim is not None else _local_path(uri)


@contextlib.contextmanager
def claim_output(
    uri: str,
    *,
    inputs: Iterable[str | None] = (),
    overwrite: bool = False,
    exists_ok: bool = False,
    kind: str = "folder",
    marker: str | None = MANIFEST_NAME,
    flag: str = "--out",
) -> Iterator[Claim | None]:
    """Check, lock and recover ``uri``; yield the :class:`Claim` (None for object stores).

    Parameters
    ----------
    inputs
        Paths the stage reads: ``uri`` may not be, contain or lie inside any of them.
    overwrite
        An existing destination may be replaced (by stage-then-swap, never deleted first).
    exists_ok
        An existing destination is the caller's to judge (a resumable training run).
    kind
        ``"folder"`` or ``"file"``: what the destination must be if it exists.
    marker
        File whose presence makes a staged folder complete (recovery of an interrupted swap);
        ``None`` for file destinations.

    The claim is re-entrant within a process: a nested claim on a held destination (a shard-set
    writer under its stage's claim) shares it. On leaving, uncommitted staging is removed, the
    lock released, and parent folders this claim created are removed again if empty.
    """
    inputs = list(inputs)
    check_out_overlap(uri, inputs, flag=flag)
    if not is_local(uri):
        yield None
        return
    path = _local_path(uri)
    key = str(path)
    if key in _CLAIMS:
        claim = _CLAIMS[key]
        claim.depth += 1
        try:
            yield claim
        finally:
            claim.depth -= 1
        return
    if os.path.lexists(path):
        if kind == "folder" and not path.is_dir():
            msg = f"{flag} {uri!r} is a file, not a directory; choose another {flag}"
            raise RaymmiError(msg)
        if kind == "file" and path.is_dir():
            msg = f"{flag} {uri!r} is a directory; give a file name"
            raise RaymmiError(msg)
        if not overwrite and not exists_ok:
            msg = (
                f"output {uri!r} already exists; choose another {flag} or pass --overwrite "
                "to replace it"
            )
            raise RaymmiError(msg)
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    if created:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            msg = f"cannot create the folder of {flag} {uri!r} ({err})"
            raise RaymmiError(msg) from err
    lock = lock_path(path)
    try:
        holder = _acquire(lock, uri, flag)
    except BaseException:
        _remove_empty(created)
        raise
    claim = Claim(
        uri=uri,
        path=path,
        overwrite=overwrite,
        kind=kind,
        marker=marker,
        holder=holder,
        recovered=[],
    )
    _CLAIMS[key] = claim
    try:
        claim.recovered = _recover(path, marker)
        yield claim
    finally:
        del _CLAIMS[key]
        claim.abort()
        lock.unlink(missing_ok=True)
        if not os.path.lexists(path):
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            return


def claiming(spec: Callable[..., dict[str, Any]]) -> Callable[[F], F]:
    """Decorate a stage's driver to run under :func:`claim_output`.

    ``spec`` receives the driver's arguments and returns :func:`claim_output`'s keyword
    arguments (``uri``, ``inputs``, ``overwrite`` ...). The claim is taken before the driver runs
    (so before Ray starts) and committed when it returns: a folder staged by :func:`work_dir` is
    swapped into place only then.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def driver(*args: Any, **kwargs: Any) -> Any:
            with claim_output(**spec(*args, **kwargs)) as claim:
                result = fn(*args, **kwargs)
                if claim is not None:
                    claim.commit()
                return result

        return driver  # type: ignore[return-value]

    return decorate
