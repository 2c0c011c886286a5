"""Progress: bars on a terminal, periodic log lines in batch jobs, epochs to the run logger."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from ue_sweep.runtime.loggers import RunLogger
from ue_sweep.runtime.progress import Progress


class RecordingLogger(RunLogger):
    """Our own run-logger interface, recording what the progress hook hands it."""

    def __init__(self) -> None:
        self.epochs: list[tuple[str, int, dict[str, Any]]] = []

    def log_epoch(self, name: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.epochs.append((name, epoch, dict(metrics)))


def _train(progress: Progress, epochs: int = 2, steps: int = 3) -> None:
    with progress.stage("generators", epochs * steps, epochs) as bar:
        for epoch in range(epochs):
            for _ in range(steps):
                bar.advance()
            bar.epoch_done(epoch, kl=1.0 / (epoch + 1), test_acc="-")
    with progress.stage("k-means", total_steps=1) as kmeans:
        kmeans.advance()


@pytest.mark.parametrize(("tty", "mode"), [(True, "bar"), (False, "log")])
def test_auto_shows_bars_on_a_terminal_and_logs_otherwise(monkeypatch, tty, mode):
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty)
    assert Progress("auto").mode == mode


def test_bar_mode_draws_a_bar_per_stage(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="ue_sweep"):
        _train(Progress("bar"))
    err = capsys.readouterr().err
    assert "generators: 100%" in err and "6/6" in err and "epoch 2/2 kl 0.5" in err
    assert "k-means: 100%" in err and "1/1" in err
    assert not caplog.records  # the bars replace the log lines


def test_log_mode_logs_epochs_periodic_positions_and_stage_ends(caplog):
    with caplog.at_level(logging.INFO, logger="ue_sweep"):
        _train(Progress("log", log_every_s=0.0))
    lines = [r.getMessage() for r in caplog.records]
    assert "generators epoch 1/2 kl 1 test_acc -" in lines
    assert "generators epoch 2/2 kl 0.5 test_acc -" in lines
    # With an interval of 0 every step logs its position; by default once a minute.
    positions = [ln for ln in lines if ln.startswith("generators step ")]
    assert positions[0].startswith("generators step 1/6 (17%)") and "left" in positions[0]
    assert any(ln.startswith("k-means done in ") for ln in lines)


def test_other_ranks_show_nothing_and_report_nothing(capsys, caplog):
    recorder = RecordingLogger()
    with caplog.at_level(logging.DEBUG, logger="ue_sweep"):
        progress = Progress("bar", enabled=False, run_logger=recorder)
        _train(progress)
        progress.info("k-means: %d clusters", 10)
    assert capsys.readouterr() == ("", "")
    assert not caplog.records and recorder.epochs == []


def test_every_epoch_reaches_the_run_logger_with_its_throughput():
    recorder = RecordingLogger()
    _train(Progress("none", run_logger=recorder))
    assert [(name, epoch) for name, epoch, _ in recorder.epochs] == [
        ("generators", 0),
        ("generators", 1),
    ]
    metrics = recorder.epochs[1][2]
    assert metrics["kl"] == 0.5 and metrics["test_acc"] == "-" and metrics["steps_per_s"] > 0
