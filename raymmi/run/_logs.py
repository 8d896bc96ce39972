"""What a run prints: raymmi's own lines, and Ray's logs only with ``--verbose``.

Left alone, Ray prints a person's terminal full: every Ray Data execution logs its plan, a
progress line every few seconds when stdout is not a terminal, and its end; every Ray Train
report and checkpoint is a line from the worker; every ``ray.init`` warns that token
authentication is on. None of it is something a user acts on. By default raymmi keeps Ray's
warnings and errors and drops the rest:

- Ray Data's logger (driver and workers) at ``WARNING`` (``RAY_DATA_LOG_LEVEL``); on a
  terminal Ray Data still draws its progress bars, which are not log lines;
- Ray Train's console logs at ``WARNING`` (``RunConfig(logging_config=...)``); raymmi prints one
  line per epoch itself (:func:`epoch_printer`);
- the token-authentication notice of ``ray.init`` is dropped (the cluster stays token-protected).

``raymmi --verbose`` (``RAYMMI_VERBOSE=1``) restores all of Ray's logs.
"""

from __future__ import annotations

import logging
import math
import os
import sys
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

    NOTICES = ("Token authentication is enabled for this Ray cluster",)

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
    for name in ("ray", "ray._private.authentication.authentication_token_setup"):
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
    for key in ("train_loss", "val_loss", "val_ari", "val_nmi", "epoch_seconds"):
        value = metrics.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            unit = " s" if key == "epoch_seconds" else ""
            shown.append(f"{key.removeprefix('epoch_')}={value:.4g}{unit}")
    return f"  {head}: " + " ".join(shown)


def epoch_printer(epochs: int | None) -> Any:
    """A Ray Train callback printing :func:`epoch_line` on the driver after every report."""
    from ray.train import UserCallback

    class EpochPrinter(UserCallback):
        def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
            if metrics:
                print(epoch_line(metrics[0], epochs=epochs), flush=True)

    return EpochPrinter()
