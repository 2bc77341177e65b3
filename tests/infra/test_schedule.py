"""Scheduled retraining: the time rules, the state file, the lock and the loop (no waiting)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import schedule
from infra.schedule import Due, RunResult
from pipelines.errors import UserError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
WEEKLY = "0 3 * * 0"  # Sundays 03:00 UTC


def t(day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    """A time in January 2025 (the 5th, 12th, 19th and 26th are Sundays)."""
    return dt.datetime(2025, 1, day, hour, minute, second, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, start: dt.datetime):
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


class Stop(Exception):
    """Raised by a test's sleep to end a loop that otherwise runs forever."""


# --- next_run ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        (WEEKLY, t(1), t(5, 3)),
        (WEEKLY, t(5, 3), t(12, 3)),  # strictly after: a slot is not its own next run
        (WEEKLY, t(5, 2, 59, 59), t(5, 3)),
        ("*/15 * * * *", t(1, 10, 7), t(1, 10, 15)),
        ("0 0 1 * *", t(1, 0, 0, 1), dt.datetime(2025, 2, 1, tzinfo=UTC)),
        # A naive time is read as UTC; another zone is converted first.
        (WEEKLY, dt.datetime(2025, 1, 5, 2, 0), t(5, 3)),
        (WEEKLY, dt.datetime(2025, 1, 5, 4, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), t(5, 3)),
    ],
)
def test_next_run(cron, after, expected):
    got = schedule.next_run(cron, after)
    assert got == expected
    assert got.tzinfo is not None and got.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("bad", ["", "bad", "0 3 * *", "61 * * * *", "0 3 * * 0 2025", "* * * * * *"])
def test_invalid_cron_is_a_user_error(bad):
    with pytest.raises(UserError, match="not valid"):
        schedule.next_run(bad, t(1))


# --- due_runs: the missed-run policy ---------------------------------------------------------


def test_nothing_due_without_history_or_before_the_next_slot():
    assert schedule.due_runs(WEEKLY, None, t(30)) is None
    assert schedule.due_runs(WEEKLY, t(5, 3), t(12, 2, 59, 59)) is None


def test_on_time_run():
    assert schedule.due_runs(WEEKLY, t(5, 3), t(12, 3)) == Due(slot=t(12, 3), missed=0)
    assert schedule.due_runs(WEEKLY, t(5, 3), t(12, 9)) == Due(slot=t(12, 3), missed=0)


def test_missed_runs_are_coalesced_into_one_for_the_latest_slot():
    # Down from before the 12th's slot until after the 26th's: three slots, one run.
    assert schedule.due_runs(WEEKLY, t(5, 3), t(27)) == Due(slot=t(26, 3), missed=2)


def test_missed_count_is_capped_for_dense_schedules():
    last = t(1)
    now = last + dt.timedelta(days=30)  # 43,200 minutely slots
    due = schedule.due_runs("* * * * *", last, now)
    assert due == Due(slot=now, missed=schedule.MAX_MISSED_COUNT)


# --- state file ----------------------------------------------------------------------------


def test_state_round_trip_and_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "deep" / "state.json"
    state = schedule.ScheduleState(
        cron=WEEKLY, watermark=t(5, 3), last_run={"slot": "x", "outcome": "succeeded"}
    )
    schedule.save_state(path, state)
    assert schedule.load_state(path) == state

    # A write that dies half-way leaves the old file whole and no temp file behind.
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(schedule.json, "dump", boom)
    with pytest.raises(OSError):
        schedule.save_state(path, schedule.ScheduleState(cron=WEEKLY, watermark=t(12, 3)))
    monkeypatch.undo()
    assert schedule.load_state(path) == state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_missing_and_damaged_state(tmp_path):
    assert schedule.load_state(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not JSON"):
        schedule.load_state(bad)
    bad.write_text(json.dumps({"version": 1, "cron": WEEKLY}))
    with pytest.raises(UserError, match="damaged"):
        schedule.load_state(bad)


def test_default_state_path():
    assert schedule.default_state_path({"INCEPT_WORKDIR": "/w"}) == Path("/w/schedule-state.json")
    assert schedule.default_state_path({}) == Path("work/schedule-state.json")


# --- the loop ------------------------------------------------------------------------------


def recording_runner(results=None):
    calls: list[Due] = []

    def run(due: Due) -> RunResult:
        calls.append(due)
        return (results or {}).get(due.slot, RunResult("succeeded", exit_code=0))

    return run, calls


def test_first_start_waits_for_the_next_slot_then_runs_once(tmp_path):
    clock = FakeClock(t(5, 1))
    runner, calls = recording_runner()
    record = schedule.run_scheduler(
        cron=WEEKLY, runner=runner, state_path=tmp_path / "s.json",
        clock=clock, sleep=clock.sleep, once=True,
    )  # fmt: skip
    assert calls == [Due(slot=t(5, 3), missed=0)]
    assert record["slot"] == t(5, 3).isoformat() and record["outcome"] == "succeeded"
    # Two hours in sleeps of at most a minute: the clock is re-read at least once a minute.
    assert max(clock.sleeps) <= 60 and sum(clock.sleeps) == pytest.approx(2 * 3600)
    saved = schedule.load_state(tmp_path / "s.json")
    assert saved.watermark == t(5, 3) and saved.running is None
    assert saved.last_run["outcome"] == "succeeded"


def test_restart_from_state_coalesces_what_was_missed(tmp_path):
    path = tmp_path / "s.json"
    schedule.save_state(path, schedule.ScheduleState(cron=WEEKLY, watermark=t(5, 3)))
    clock = FakeClock(t(27, 12))  # down across the 12th, 19th and 26th
    runner, calls = recording_runner()
    record = schedule.run_scheduler(
        cron=WEEKLY, runner=runner, state_path=path, clock=clock, sleep=clock.sleep, once=True
    )
    assert calls == [Due(slot=t(26, 3), missed=2)]  # one run, not a burst of three
    assert clock.sleeps == []  # ran at once
    assert record["missed"] == 2
    assert schedule.load_state(path).watermark == t(26, 3)


def test_interrupted_run_is_due_again_after_restart(tmp_path):
    path = tmp_path / "s.json"
    running = {"slot": t(12, 3).isoformat(), "started_at": t(12, 3).isoformat()}
    schedule.save_state(
        path, schedule.ScheduleState(cron=WEEKLY, watermark=t(5, 3), running=running)
    )
    clock = FakeClock(t(12, 5))
    runner, calls = recording_runner()
    schedule.run_scheduler(
        cron=WEEKLY, runner=runner, state_path=path, clock=clock, sleep=clock.sleep, once=True
    )
    assert calls == [Due(slot=t(12, 3), missed=0)]


def test_a_failed_or_raising_run_is_recorded_and_the_loop_goes_on(tmp_path):
    path = tmp_path / "s.json"
    schedule.save_state(path, schedule.ScheduleState(cron=WEEKLY, watermark=t(5, 3)))
    clock = FakeClock(t(12, 3))
    calls = []

    def runner(due):
        calls.append(due.slot)
        if due.slot == t(12, 3):
            raise RuntimeError("cluster on fire")
        return RunResult("failed", exit_code=3, detail="exit status 3")

    def sleep(seconds):
        if clock.now > t(20):
            raise Stop
        clock.sleep(seconds)

    with pytest.raises(Stop):
        # Hour-long naps: a week of minute-long ones would only slow the test down.
        schedule.run_scheduler(
            cron=WEEKLY, runner=runner, state_path=path, clock=clock, sleep=sleep,
            max_sleep_s=3600,
        )  # fmt: skip
    assert calls == [t(12, 3), t(19, 3)]
    saved = schedule.load_state(path)
    assert saved.watermark == t(19, 3)
    assert saved.last_run["outcome"] == "failed" and saved.last_run["exit_code"] == 3


def test_the_real_loop_runs_a_real_command_for_one_cycle(tmp_path):
    out = tmp_path / "ran.txt"
    # The trivial command stands in for `incept retrain`: it records its argument and the slot.
    command = [
        sys.executable, "-c",
        "import os, sys; open(sys.argv[1], 'w').write(os.environ['INCEPT_SCHEDULE_SLOT'])",
    ]  # fmt: skip
    runner = schedule.local_runner([str(out)], command=command, timeout_s=60)
    clock = FakeClock(t(12, 2, 58, 30))
    record = schedule.run_scheduler(
        cron=WEEKLY, runner=runner, state_path=tmp_path / "s.json",
        clock=clock, sleep=clock.sleep, once=True,
    )  # fmt: skip
    assert out.read_text() == t(12, 3).isoformat()
    assert record["outcome"] == "succeeded" and record["exit_code"] == 0
    assert clock.sleeps == [60.0, 30.0]


def test_local_runner_reports_failure_and_timeout(tmp_path):
    due = Due(slot=t(12, 3), missed=0)
    failing = schedule.local_runner(["7"], command=[sys.executable, "-c", "import sys; sys.exit(int(sys.argv[1]))"])
    assert failing(due) == RunResult("failed", exit_code=7, detail="exit status 7")
    slow = schedule.local_runner(["5"], command=[sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"], timeout_s=0.5)
    result = slow(due)
    assert result.outcome == "failed" and "timed out" in result.detail


def test_job_ids_are_fixed_per_slot_and_schedule():
    a = schedule.job_id_for(t(12, 3), WEEKLY, ["--src", "x"])
    assert a == schedule.job_id_for(t(12, 3), WEEKLY, ["--src", "x"])
    assert a.startswith("incept-retrain-20250112T0300Z-")
    assert a != schedule.job_id_for(t(19, 3), WEEKLY, ["--src", "x"])
    assert a != schedule.job_id_for(t(12, 3), WEEKLY, ["--src", "y"])


# --- the lock ------------------------------------------------------------------------------


def test_second_scheduler_on_the_same_state_is_refused(tmp_path):
    path = tmp_path / "s.json"
    with schedule.scheduler_lock(path):
        runner, calls = recording_runner()
        with pytest.raises(UserError, match="already running"):
            schedule.run_scheduler(cron=WEEKLY, runner=runner, state_path=path, once=True)
        assert calls == []
    # Released: the next one gets it.
    with schedule.scheduler_lock(path):
        pass


def test_second_scheduler_process_is_refused_with_one_clear_line(tmp_path):
    state = tmp_path / "s.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "infra.cli", "schedule", "--cron", WEEKLY, "--state", str(state),
            "--", "--src", "x", "--config", "y"]  # fmt: skip
    first = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (state.exists() and "scheduler" in state.read_text()):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("incept schedule: error: another `incept schedule` is already running")
        assert f"pid {first.pid}" in lines[0]
    finally:
        first.terminate()
        first.wait(timeout=10)
