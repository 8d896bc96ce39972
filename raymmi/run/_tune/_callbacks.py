"""``raymmi tune``: Tune callbacks run by the search's driver, and the placement-group reaper."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Tune callbacks run by the search's driver
# ----------------------------------------------------------------------------------------------


def reap_orphaned_placement_groups() -> int:
    """Remove this job's placement groups whose creating actor is dead; return how many.

    A trial that ASHA stops is killed with its Train controller, but the Train workers'
    placement group outlives them: Train V2 hands its removal to a helper that needs the
    dashboard's state API, and without it the CPUs stay reserved and later trials wait forever
    (raymmi/run/README.md, "Ray Tune"). A placement group created by an actor that has died is
    reachable by nobody, so removing it is safe. Reads the GCS table through Ray's private state
    accessor (no public API gives the creator): only on the Ray versions it was checked on.
    """
    import ray

    from raymmi.run._runtime import check_private_state_api

    check_private_state_api()
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    table: Any = gcs_pb2.PlacementGroupTableData  # type: ignore[attr-defined]
    job = ray.get_runtime_context().get_job_id()
    accessor = state._connect_and_get_accessor()
    removed = 0
    for raw in accessor.get_placement_group_table():
        pg = table.FromString(raw)
        if pg.state == table.REMOVED or pg.is_detached:
            continue
        if ray.ActorID(pg.creator_actor_id).is_nil() or not pg.creator_actor_dead:
            continue
        if ray.JobID(pg.creator_job_id).hex() != job:
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(pg.placement_group_id)))
        removed += 1
    return removed


def trial_line(done: int, trial_id: str, status: str, result: dict[str, Any], metric: str) -> str:
    """One line when a trial ends: its number, id, how it ended and its last metric."""
    value = result.get(metric)
    shown = f" {metric}={value:.4g}" if isinstance(value, int | float) else ""
    epochs = result.get("epochs_done")
    after = f" after {int(epochs)} epoch{'s' if epochs != 1 else ''}" if epochs else ""
    if "members_completed" in result:  # a pack: how its members ended, its best member's metric
        counts = ", ".join(
            f"{int(result[f'members_{k}'])} {k}"
            for k in ("completed", "stopped", "error")
            if result.get(f"members_{k}")
        )
        after = f" (members: {counts}; the longest trained {int(epochs or 0)} epochs)"
        shown = f" best {shown.strip()}" if shown else ""
    return f"  trial {done} ({trial_id}) {status}{after}:{shown}".rstrip(":")


def _callbacks(every_s: float = 1.0, *, metric: str | None = None) -> list[Any]:
    from ray.tune import Callback

    from raymmi.run._logs import verbose

    class Progress(Callback):
        """Prints one line per ended trial (Tune's own tables show only with --verbose)."""

        def __init__(self) -> None:
            self.done = 0

        def _say(self, trial: Any, status: str) -> None:
            self.done += 1
            if metric is not None and not verbose():
                result = dict(getattr(trial, "last_result", None) or {})
                print(trial_line(self.done, trial.trial_id, status, result, metric), flush=True)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._say(trial, "ended")

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._say(trial, "failed")

    class Reaper(Callback):
        """Every ``every_s`` seconds, free the CPUs stopped trials' Train workers still hold."""

        def __init__(self) -> None:
            self.last = 0.0
            self.removed = 0
            self.broken = False

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            now = time.monotonic()
            if self.broken or now - self.last < every_s:
                return
            self.last = now
            try:
                self.removed += reap_orphaned_placement_groups()
            except Exception as err:  # private API: warn once, never break the search
                self.broken = True
                log.warning("cannot reap placement groups of stopped trials: %s", err)

        def get_state(self) -> dict[str, Any] | None:
            return {"removed": self.removed}

        def set_state(self, state: dict[str, Any]) -> None:
            self.removed = int(state.get("removed", 0))

    class Clock(Callback):
        """Wall time of every trial, start to end, as its driver sees it (overhead figures)."""

        def __init__(self) -> None:
            self.times: dict[str, list[float]] = {}

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self.times[trial.trial_id] = [time.time(), math.nan]

        def _end(self, trial: Any) -> None:
            if trial.trial_id in self.times:
                self.times[trial.trial_id][1] = time.time()

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._end(trial)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            self._end(trial)

        def get_state(self) -> dict[str, Any] | None:
            return {"times": self.times}

        def set_state(self, state: dict[str, Any]) -> None:
            self.times = dict(state.get("times", {}))

    return [Reaper(), Clock(), Progress()]
