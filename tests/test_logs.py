"""What runs print: one line per epoch, Ray's notices dropped unless --verbose."""

from __future__ import annotations

import logging
import math

from raymmi.run import (
    VERBOSE_ENV,
    EpochPrinter,
    epoch_line,
    quiet_driver,
    train_log_level,
    verbose,
    worker_log_env,
)


def test_epoch_line_reads_like_a_training_log():
    metrics = {"epoch": 2, "train_loss": 0.51234, "val_loss": 0.6, "val_ari": 0.41, "x": 1}
    assert epoch_line(metrics, epochs=15) == (
        "  epoch 3/15: train_loss=0.5123 val_loss=0.6 val_ari=0.41"
    )
    assert epoch_line({"epoch": 0, "val_ari": math.nan, "epoch_seconds": 1.25}) == (
        "  epoch 1: seconds=1.25 s"
    )


def test_quiet_unless_verbose(monkeypatch, caplog):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    assert not verbose() and train_log_level() == "WARNING"
    assert worker_log_env() == {"RAY_DATA_LOG_LEVEL": "WARNING"}
    quiet_driver()
    logger = logging.getLogger("ray")
    with caplog.at_level(logging.WARNING, logger="ray"):
        logger.warning("Token authentication is enabled for this Ray cluster. Set ...")
        logger.warning("a real warning")
    assert [r.getMessage() for r in caplog.records] == ["a real warning"]
    caplog.clear()
    progress = logging.getLogger("ray.data._internal.progress")
    with caplog.at_level(logging.WARNING, logger="ray.data._internal.progress"):
        progress.warning("Progress bars disabled. To enable, set ...")
    assert not caplog.records
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() == logging.WARNING
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert verbose() and train_log_level() == "INFO" and worker_log_env() == {}


def test_epoch_printer_reads_the_checkpoints_as_they_appear(tmp_path, capsys):
    import json

    folder = tmp_path / "train"
    printer = EpochPrinter(folder, epochs=3)
    printer.poll()  # no folder yet: nothing, no error
    history = []
    for epoch in range(3):
        history.append({"epoch": epoch, "train_loss": 1.0 / (epoch + 1)})
        (folder / f"epoch-{epoch:05d}").mkdir(parents=True)
        (folder / f"epoch-{epoch:05d}" / "state.json").write_text(json.dumps({"history": history}))
        if epoch == 1:
            printer.poll()
    (folder / "epoch-00003").mkdir()  # being written: no state.json yet
    printer.poll()
    printer.poll()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "  epoch 1/3: train_loss=1",
        "  epoch 2/3: train_loss=0.5",
        "  epoch 3/3: train_loss=0.3333",
    ]


def test_a_search_prints_a_line_per_ended_trial():
    from raymmi.run import trial_line

    assert trial_line(3, "ab12", "ended", {"val_ari": 0.41234, "epochs_done": 2}, "val_ari") == (
        "  trial 3 (ab12) ended after 2 epochs: val_ari=0.4123"
    )
    assert trial_line(1, "x", "failed", {}, "val_ari") == "  trial 1 (x) failed"
    pack = {"val_ari": 0.5, "epochs_done": 9, "members_completed": 0.0, "members_stopped": 8.0}
    assert trial_line(2, "p", "ended", pack, "val_ari") == (
        "  trial 2 (p) ended (members: 8 stopped; the longest trained 9 epochs): best val_ari=0.5"
    )
