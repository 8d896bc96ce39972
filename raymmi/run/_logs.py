"""What a run prints: raymmi's own lines, and Ray's logs only with ``--verbose``.

Left alone, Ray prints a person's terminal full: every Ray Data execution logs its plan, a
progress line every few seconds when stdout is not a terminal, and its end; every Ray Train
report and checkpoint is a line from the worker; every ``ray.init`` warns that token
authentication is on. None of it is something a user acts on. By default raymmi keeps Ray's
warnings and errors and drops the rest:

- Ray Data's logger (driver and workers) at ``WARNING`` (``RAY_DATA_LOG_LEVEL``); on a
  terminal Ray Data still draws its progress bars, which are not log lines;
- Ray Train's console logs at ``WARNING`` (``RunConfig(logging_config=...)``); raymmi prints one
  line per epoch itself (:class:`EpochPrinter`);
- worker and actor output is not forwarded to the driver (``ray.init(log_to_driver=False)``):
  Ray Train's controller and placement-group cleaner warn every few seconds when Ray runs
  without its dashboard, and Ray Data's actors print notices; it all stays in Ray's session
  log folder (``/tmp/ray/session_latest/logs``). Errors still reach the driver as exceptions;
- the token-authentication notice of ``ray.init`` is dropped (the cluster stays token-protected),
  and so are Ray Data's "Progress bars disabled" notice (raymmi prints one line per epoch
  instead of bars there) and MLflow's "Creating initial MLflow database tables" lines.

``raymmi --verbose`` (``RAYMMI_VERBOSE=1``) restores all of Ray's logs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

VERBOSE_ENV = "RAYMMI_VERBOSE"


def verbose() -> bool:
    """Whether Ray's own logs are wanted (``--verbose`` / ``RAYMMI_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def worker_log_env() -> dict[str, str]:
    """Environment variables for Ray's workers that keep their logs at raymmi's level."""
    return {} if verbose() else {"RAY_DATA_LOG_LEVEL": "WARNING"}


class _DropNotices(logging.Filter):
    """Drops Ray's informational notices that arrive at warning level."""

    NOTICES = (
        "Token authentication is enabled for this Ray cluster",
        # raymmi turns Ray Data's bars off where it prints its own lines (training epochs)
        "Progress bars disabled",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOTICES)


def quiet_driver() -> None:
    """Apply raymmi's log levels in this (driver) process; call before ``ray.init``."""
    if verbose():
        return
    for name, value in worker_log_env().items():
        os.environ.setdefault(name, value)
    if "ray.data" in sys.modules:  # configured at import: set the level it already read
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
    # Tune's legacy reporter at verbose=0 prints nothing; the new one still prints its
    # configuration box and a TensorBoard hint before every search
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow announces creating and upgrading its SQLite tables on every new store
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    for name in (
        "ray",
        "ray._private.authentication.authentication_token_setup",
        "ray.data._internal.progress",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())
        for handler in logger.handlers:
            if not any(isinstance(f, _DropNotices) for f in handler.filters):
                handler.addFilter(_DropNotices())


def train_log_level() -> str:
    """Level of Ray Train's console logs (its ``LoggingConfig``)."""
    return "INFO" if verbose() else "WARNING"


def epoch_line(metrics: Mapping[str, Any], *, epochs: int | None = None) -> str:
    """One line for a finished epoch: its number, the losses and the validation metric."""
    epoch = int(metrics.get("epoch", -1)) + 1
    head = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
    shown = []
    for key in ("train_loss", "val_loss", "val_ari", "val_nmi", "all_ari", "epoch_seconds"):
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            unit = " s" if key == "epoch_seconds" else ""
            shown.append(f"{key.removeprefix('epoch_')}={value:.4g}{unit}")
    return f"  {head}: " + " ".join(shown)


class EpochPrinter:
    """Prints :func:`epoch_line` on the driver for every epoch a training run checkpoints.

    Ray Train reports reach callbacks in its controller process, whose output is not the
    driver's (and is not forwarded without ``--verbose``); every checkpoint folder's
    ``state.json`` carries the run's history, so a driver thread reads them as they appear.
    Use as a context manager around ``trainer.fit()``.
    """

    def __init__(
        self, folder: str | os.PathLike[str], *, epochs: int | None, every_s: float = 0.5
    ):
        self.folder = os.fspath(folder)
        self.epochs = epochs
        self.every_s = every_s
        self.printed = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="epoch-printer", daemon=True)

    def __enter__(self) -> EpochPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # the last epochs, written just before fit() returned

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        """Print the epochs of the newest complete checkpoint not printed yet."""
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.startswith("epoch-"))
        except OSError:
            return
        for name in reversed(names):
            try:
                with open(os.path.join(self.folder, name, "state.json"), encoding="utf-8") as f:
                    history = json.load(f)["history"]
            except (OSError, ValueError, KeyError):
                continue  # being written, or removed by checkpoint rotation
            for row in history[self.printed + 1 :]:
                print(epoch_line(row, epochs=self.epochs), flush=True)
            self.printed = max(self.printed, len(history) - 1)
            return
