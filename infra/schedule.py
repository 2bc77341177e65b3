"""Scheduled retraining: run `incept retrain ...` on a cron expression, one run at a time.

The timing rules are pure functions of their inputs (`next_run`, `due_runs`), so tests drive
them with plain datetimes; the loop (`run_scheduler`) takes its clock and sleep function as
arguments, so a test runs a whole cycle without waiting.

Rules, all in UTC (cron expressions are read in UTC: no daylight-saving jumps, and a cluster's
nodes agree on it):
- A *slot* is a time the cron expression names. The state's *watermark* is the latest slot
  dealt with; slots after it and at or before now are due.
- Missed runs are coalesced: if the scheduler was down across several slots, it runs ONCE, for
  the latest of them, and records how many it folded in. A retrain trains on the data as it is
  now, so replaying a burst of stale slots would only repeat the same work.
- A scheduler that starts with no state does not run for past slots: its first run is the
  next slot after it started (the start time becomes the watermark).
- A run interrupted by the scheduler dying (state says "running") is due again on restart;
  with `--submit` the job ID is a function of the slot, so the restarted scheduler follows the
  job already on the cluster instead of submitting a second one.
- A failed run is recorded and not retried until the next slot.
- State lives in a JSON file written atomically (temp file + rename), beside a lock file that
  keeps a second scheduler off the same state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import UserError

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
STATE_VERSION = 1
DEFAULT_STATE_NAME = "schedule-state.json"

# Counting missed slots stops here: "* * * * *" down for a year is 525,600 slots, and the count
# is only reported, never replayed.
MAX_MISSED_COUNT = 10_000


# --- time rules ------------------------------------------------------------------------


def _utc(t: dt.datetime) -> dt.datetime:
    """`t` in UTC; a naive datetime is taken to be UTC already."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def validate_cron(cron: str) -> str:
    """`cron` if it is a standard 5-field expression (minute hour day month weekday)."""
    from croniter import croniter

    # croniter also takes 6 and 7 fields, where the 6th means seconds or a year depending on
    # options: allow only the unambiguous standard form.
    if len(cron.split()) != 5 or not croniter.is_valid(cron):
        raise UserError(
            f"cron expression {cron!r} is not valid: give 5 fields, minute hour day-of-month "
            'month day-of-week, e.g. "0 3 * * 0" (Sundays 03:00 UTC)'
        )
    return cron


def next_run(cron: str, after: dt.datetime) -> dt.datetime:
    """The first slot strictly after `after` (UTC)."""
    from croniter import croniter

    return _utc(croniter(validate_cron(cron), _utc(after)).get_next(dt.datetime))


@dataclass(frozen=True)
class Due:
    """The one run that is due: it stands for `slot` and `missed` earlier slots folded into it."""

    slot: dt.datetime
    missed: int  # earlier due slots coalesced into this run (0: on time); capped at MAX_MISSED_COUNT


def due_runs(cron: str, last_run: dt.datetime | None, now: dt.datetime) -> Due | None:
    """The run due at `now` when slots up to `last_run` are done, or None.

    All slots in (last_run, now] are coalesced into one run for the latest of them. With no
    `last_run` (a scheduler without history) nothing is due: past slots are not made up.
    """
    if last_run is None:
        return None
    from croniter import croniter

    now = _utc(now)
    slots = croniter(validate_cron(cron), _utc(last_run))  # one iterator: each step is cheap
    slot = _utc(slots.get_next(dt.datetime))
    if slot > now:
        return None
    for missed in range(MAX_MISSED_COUNT):
        later = _utc(slots.get_next(dt.datetime))
        if later > now:
            return Due(slot=slot, missed=missed)
        slot = later
    # Too many to walk: jump straight to the latest slot at or before now.
    latest = _utc(croniter(cron, now + dt.timedelta(microseconds=1)).get_prev(dt.datetime))
    return Due(slot=latest, missed=MAX_MISSED_COUNT)


# --- state -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """How one run ended."""

    outcome: str  # "succeeded" or "failed"
    exit_code: int | None = None  # the retrain process's status (local runs)
    job_id: str | None = None  # the Ray job's submission ID (--submit runs)
    detail: str = ""  # one line: why it failed, or the job's final status


@dataclass(frozen=True)
class ScheduleState:
    """What the scheduler must remember across restarts (the JSON state file)."""

    cron: str
    watermark: dt.datetime  # slots at or before this are done (run, coalesced or skipped)
    last_run: dict[str, Any] | None = None  # slot, started_at, finished_at, missed, outcome...
    running: dict[str, Any] | None = None  # slot, started_at, job_id of a run in progress
    scheduler: dict[str, Any] | None = None  # pid, host, started_at of the scheduler

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "cron": self.cron,
            "watermark": self.watermark.isoformat(),
            "last_run": self.last_run,
            "running": self.running,
            "scheduler": self.scheduler,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> ScheduleState:
        if data.get("version") != STATE_VERSION:
            raise UserError(
                f"schedule state {path} has version {data.get('version')!r}, expected "
                f"{STATE_VERSION}; move it aside to start afresh"
            )
        try:
            return cls(
                cron=str(data["cron"]),
                watermark=_utc(dt.datetime.fromisoformat(data["watermark"])),
                last_run=data.get("last_run"),
                running=data.get("running"),
                scheduler=data.get("scheduler"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"schedule state {path} is damaged ({err}); move it aside to start afresh"
            ) from None


def load_state(path: Path) -> ScheduleState | None:
    """The state saved at `path`, or None if there is none yet."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"schedule state {path} is not JSON ({err.msg}); move it aside to start afresh"
        ) from None
    return ScheduleState.from_json(data, Path(path))


def save_state(path: Path, state: ScheduleState) -> None:
    """Write `state` to `path` atomically: a reader sees the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX within one file system
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    """`<workdir>/schedule-state.json`, workdir = $INCEPT_WORKDIR or ./work."""
    env = os.environ if environ is None else environ
    return Path(env.get("INCEPT_WORKDIR") or "work") / DEFAULT_STATE_NAME


@contextlib.contextmanager
def scheduler_lock(state_path: Path) -> Iterator[Path]:
    """Hold `<state>.lock` for the scheduler's lifetime; a second holder gets a UserError.

    An OS file lock (flock): it is released when the process dies, so a crashed scheduler
    never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    lock_path = Path(f"{state_path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = ""
        with contextlib.suppress(UserError, OSError):
            state = load_state(state_path)
            if state and state.scheduler:
                s = state.scheduler
                holder = f" (pid {s.get('pid')} on {s.get('host')}, since {s.get('started_at')})"
        raise UserError(
            f"another `incept schedule` is already running on {state_path}{holder}; "
            "stop it first, or give this one its own --state"
        ) from None
    try:
        yield lock_path
    finally:
        lock.release()


# --- runners: what one run does ------------------------------------------------------------

Runner = Callable[[Due], RunResult]


def _slot_tag(slot: dt.datetime) -> str:
    return _utc(slot).strftime("%Y%m%dT%H%MZ")


def local_runner(
    retrain_args: Sequence[str],
    *,
    command: Sequence[str] | None = None,
    timeout_s: float | None = None,
) -> Runner:
    """Run `incept retrain RETRAIN_ARGS` (or `command + retrain_args`) as a subprocess.

    Its output goes to the scheduler's own stdout and stderr. `timeout_s` is off by default:
    a retrain on ImageNet legitimately runs for days, and its own outside calls have timeouts.
    The slot is passed as INCEPT_SCHEDULE_SLOT for the run's logs and tags.
    """
    prefix = list(command) if command is not None else [sys.executable, "-m", "infra.cli", "retrain"]

    def run(due: Due) -> RunResult:
        argv = [*prefix, *retrain_args]
        env = {**os.environ, "INCEPT_SCHEDULE_SLOT": due.slot.isoformat()}
        log.info("running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, env=env, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return RunResult("failed", detail=f"timed out after {timeout_s:g} s")
        except OSError as err:
            return RunResult("failed", detail=f"cannot start {argv[0]}: {err.strerror}")
        outcome = "succeeded" if proc.returncode == 0 else "failed"
        return RunResult(outcome, exit_code=proc.returncode, detail=f"exit status {proc.returncode}")

    return run


def job_id_for(slot: dt.datetime, cron: str, retrain_args: Sequence[str]) -> str:
    """The Ray job ID of the run for `slot`: the same slot of the same schedule, the same ID.

    The hash tells apart two schedules on one cluster whose slots coincide.
    """
    digest = hashlib.sha256(json.dumps([cron, list(retrain_args)]).encode()).hexdigest()[:8]
    return f"incept-retrain-{_slot_tag(slot)}-{digest}"


def submit_runner(
    retrain_args: Sequence[str],
    *,
    cron: str,
    address: str | None = None,
    poll_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Runner:
    """Submit `incept retrain RETRAIN_ARGS` as a Ray job (see infra.jobs) and follow it.

    If the slot's job already exists (a scheduler restarted mid-run), it is followed, not
    submitted again.
    """
    from infra import jobs

    def run(due: Due) -> RunResult:
        job_id = job_id_for(due.slot, cron, retrain_args)
        try:
            client = jobs.connect(address)
            existing = jobs.job_status_or_none(client, job_id)
            if existing is None:
                jobs.submit(
                    client,
                    ["retrain", *retrain_args],
                    submission_id=job_id,
                    metadata={"incept_schedule_slot": due.slot.isoformat()},
                )
                log.info("submitted job %s to %s", job_id, client.get_address())
            else:
                log.info("job %s already on the cluster (%s): following it", job_id, existing)
            status = jobs.wait_for_job(client, job_id, out=None, poll_s=poll_s, sleep=sleep)
        except UserError as err:
            return RunResult("failed", job_id=job_id, detail=str(err))
        outcome = "succeeded" if status == "SUCCEEDED" else "failed"
        return RunResult(outcome, job_id=job_id, detail=f"job {status}")

    return run


# --- the loop --------------------------------------------------------------------------


def _now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def _iso(t: dt.datetime) -> str:
    return _utc(t).isoformat(timespec="seconds")


def run_scheduler(
    *,
    cron: str,
    runner: Runner,
    state_path: Path,
    clock: Callable[[], dt.datetime] = _now_utc,
    sleep: Callable[[float], None] = time.sleep,
    once: bool = False,
    max_sleep_s: float = 60.0,
) -> dict[str, Any] | None:
    """Run `runner` on `cron`'s slots until interrupted; with `once`, after one run.

    Returns the record of the last run (with `once`). Sleeps at most `max_sleep_s` at a time,
    re-reading the clock after each, so a suspended machine or a changed clock is noticed.
    A runner that raises counts as a failed run; the loop goes on.
    """
    validate_cron(cron)
    state_path = Path(state_path)
    with scheduler_lock(state_path):
        start = _utc(clock())
        state = load_state(state_path)
        if state is None:
            state = ScheduleState(cron=cron, watermark=start)
            log.info("no schedule state at %s: first run at the next slot", state_path)
        elif state.cron != cron:
            log.info("cron changed from %r to %r; keeping the watermark %s",
                     state.cron, cron, _iso(state.watermark))  # fmt: skip
        if state.running:
            log.warning(
                "the run for slot %s was interrupted (the scheduler stopped mid-run); "
                "it is due again",
                state.running.get("slot"),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _iso(start)}
        state = dataclasses.replace(state, cron=cron, scheduler=me)
        save_state(state_path, state)
        log.info("next run at %s", _iso(next_run(cron, max(state.watermark, start))))

        while True:
            now = _utc(clock())
            due = due_runs(cron, state.watermark, now)
            if due is None:
                wake = next_run(cron, max(state.watermark, now))
                sleep(min(max((wake - now).total_seconds(), 0.0), max_sleep_s))
                continue
            if due.missed:
                log.warning(
                    "%d earlier slot(s) missed (scheduler down, or the last run outlasted "
                    "them): running once, for slot %s",
                    due.missed,
                    _iso(due.slot),
                )
            started = _utc(clock())
            running = {"slot": _iso(due.slot), "started_at": _iso(started)}
            state = dataclasses.replace(state, running=running)
            save_state(state_path, state)
            try:
                result = runner(due)
            except Exception as err:  # a bug or an outage in one run must not end the schedule
                log.exception("run for slot %s raised", _iso(due.slot))
                result = RunResult("failed", detail=f"{type(err).__name__}: {err}"[:300])
            record = {
                **running,
                "finished_at": _iso(clock()),
                "missed": due.missed,
                **dataclasses.asdict(result),
            }
            state = dataclasses.replace(state, watermark=due.slot, last_run=record, running=None)
            save_state(state_path, state)
            log.info(
                "run for slot %s %s (%s); next run at %s",
                record["slot"],
                result.outcome,
                result.detail,
                _iso(next_run(cron, max(due.slot, _utc(clock())))),
            )
            if once:
                return record
