"""The short fault-injection suite (the long one is `make chaos`): 0 duplicates and 0 missing, figures printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import (
    printable,
    report,
    scenario_dead_hook,
    scenario_glpi_faults,
    scenario_kill9,
    scenario_rebalance_and_broker_restart,
)
from tests.harness import KafkaBroker

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(900)]


def _check(title: str, figures: dict, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print()
        report(title, printable(figures))
    verdict = figures["_verdict"]
    assert verdict.duplicates == 0, verdict.details
    assert verdict.missing == 0, verdict.details
    assert verdict.wrong_status == 0, verdict.details


def test_kill9_at_ten_random_points(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = scenario_kill9(kafka, tmp_path / "kill9", kills=10)
    assert figures["kill -9 points"] == 10
    assert figures["events published"] >= 500
    _check("kill -9 at random points (short)", figures, capsys)


def test_glpi_faults(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check("GLPI faults (short)", scenario_glpi_faults(kafka, tmp_path / "faults"), capsys)


def test_one_dead_hook(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = scenario_dead_hook(kafka, tmp_path / "dead", outage=15)
    assert figures["_healthy_synced_during_outage"] > 0  # the other hooks kept flowing
    _check("one hook's GLPI down (short)", figures, capsys)


def test_rebalance_and_broker_restart(kafka: KafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check("rebalance and broker restart", scenario_rebalance_and_broker_restart(kafka, tmp_path / "rebal"), capsys)
