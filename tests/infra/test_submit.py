"""`incept submit` and `incept jobs` against a real `ray start --head` with token auth on.

The head is the test session's cluster head (tests/servers.py): its own ports (every port Ray
opens), its own temp dir, its own process group, which the fixture kills at the end. Never
`ray stop`: it would end the Ray instances other test sessions on this machine are using.

Token authentication, as Ray 2.60 turns it on here: `ray start --head` with RAY_AUTH_MODE unset
requires a token as soon as one exists, and any local `ray.init()` on this machine writes
~/.ray/auth_token. The head therefore starts the plain way, with a HOME of its own holding a
token file, and must come up in token mode. Clients then pass the token the ways a user would:
the same ~/.ray/auth_token (same HOME: the default client below), RAY_AUTH_TOKEN, or a file
named by RAY_AUTH_TOKEN_PATH; with HOME pointed elsewhere, no token, or a wrong one, they are
refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra import jobs
from pipelines.errors import UserError

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


# --- unit: the pure parts ----------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("explicit", "environ", "expected"),
    [
        ("http://h:8265/", {"RAY_ADDRESS": "http://x:1"}, "http://h:8265"),
        (None, {"RAY_API_SERVER_ADDRESS": "http://a:1", "RAY_ADDRESS": "http://b:2"}, "http://a:1"),
        (None, {"RAY_ADDRESS": "https://b:2"}, "https://b:2"),
        # A GCS address is for ray.init, not the job server: fall back to the local default.
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, jobs.DEFAULT_ADDRESS),
        (None, {}, jobs.DEFAULT_ADDRESS),
    ],
)
def test_resolve_address(explicit, environ, expected):
    assert jobs.resolve_address(explicit, environ) == expected


@pytest.mark.unit
def test_resolve_address_rejects_non_http():
    with pytest.raises(UserError, match="not an http"):
        jobs.resolve_address("ray://h:10001", {})


@pytest.mark.unit
def test_find_auth_token_follows_rays_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    token_file = tmp_path / "tok"
    token_file.write_text(" from-file \n")
    path_env = {"RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert jobs.find_auth_token({"RAY_AUTH_TOKEN": "env", **path_env}, home)[0] == "env"
    assert jobs.find_auth_token(path_env, home)[0] == "from-file"
    assert jobs.find_auth_token({}, home)[0] == "from-home"
    assert jobs.find_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, home) is None
    assert jobs.find_auth_token({}, tmp_path / "nohome") is None
    with pytest.raises(UserError, match="no token found"):
        jobs.find_auth_token({"RAY_AUTH_MODE": "token"}, tmp_path / "nohome")
    with pytest.raises(UserError, match="cannot be read"):
        jobs.find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home)


@pytest.mark.unit
def test_entrypoint_quotes_arguments():
    assert (
        jobs.build_entrypoint(["train", "--config", "a b.yaml", "run_name=x;y"])
        == "python -m infra.cli train --config 'a b.yaml' 'run_name=x;y'"
    )


@pytest.mark.unit
def test_runtime_env_ships_the_tree_without_heavy_or_private_paths():
    env = jobs.build_runtime_env(
        environ={
            "MLFLOW_TRACKING_URI": "http://incept:uri-pw@mlflow:5000",
            "MLFLOW_TRACKING_USERNAME": "incept",
            "MLFLOW_TRACKING_PASSWORD": "pw",
            "AWS_SECRET_ACCESS_KEY": "aws-secret",
            "INCEPT_WORKDIR": "/shared/work",
            "RAY_AUTH_TOKEN": "never-shipped",
            "HOME": "/root",
        }
    )
    assert env["working_dir"] == str(REPO)
    # No credential travels: Ray stores the runtime_env with the job and shows it to every lister.
    assert env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "INCEPT_WORKDIR": "/shared/work",
    }
    # Match the patterns the way Ray does (its bundled pathspec, gitwildmatch): a private helper,
    # used here so a pattern typo shows up as a failing test rather than a 2 GiB upload.
    from ray._private.runtime_env.packaging import _get_excludes

    excluded = _get_excludes(REPO, env["excludes"])
    for path in [".venv", "work", ".git", "data", "mlruns", "mlflow.db", "shards/x-000000.tar",
                 "infra/__pycache__", "incept.egg-info"]:
        assert excluded(REPO / path), path
    for path in ["infra/cli.py", "pipelines/shard.py", "configs", "ray_cluster.yaml",
                 "tests/infra/data", "pyproject.toml"]:
        assert not excluded(REPO / path), path


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x" * 101, "über"])
def test_submission_id_validation(bad):
    with pytest.raises(UserError):
        jobs.validate_submission_id(bad)


@pytest.mark.unit
def test_redact_hides_secrets():
    assert jobs.redact({"MLFLOW_TRACKING_PASSWORD": "pw", "MLFLOW_TRACKING_URI": "http://u:uri-pw@host:5000/x", "A": "b"}) == {
        "MLFLOW_TRACKING_PASSWORD": "***",
        "MLFLOW_TRACKING_URI": "http://***@host:5000/x",
        "A": "b",
    }


@pytest.mark.unit
def test_job_details_hide_credentials_other_tools_put_there():
    from types import SimpleNamespace

    info = SimpleNamespace(
        submission_id="j1", job_id="01", status="RUNNING", message="", start_time=None, end_time=None, metadata={},
        entrypoint="python -m infra.cli train data.train=s3://AKIA:s3cret@bucket/t",
        runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": "http://u:uri-pw@h:5000", "AWS_SECRET_ACCESS_KEY": "aws-pw"}},
    )
    shown = json.dumps(jobs._job_dict(info))
    assert "s3cret" not in shown and "uri-pw" not in shown and "aws-pw" not in shown
    assert "s3://***@bucket/t" in shown and "http://***@h:5000" in shown


@pytest.mark.unit
@pytest.mark.parametrize("arg", ["data.train=s3://AKIA:s3cret@bucket/train", "http://u:pw@mlflow:5000", "--src=gs://tok@b/x"])
def test_entrypoint_with_credentials_is_refused(arg):
    with pytest.raises(UserError, match="user:password") as err:
        jobs.build_entrypoint(["train", arg])
    assert "s3cret" not in str(err.value) and "pw@" not in str(err.value)


# --- e2e: a real head ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus every Ray/MLflow setting the test runner might carry."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "MLFLOW_")) and k != "INCEPT_WORKDIR"
    }
    # The job's `python` must be this virtualenv's, as on a cluster built from this project.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Head:
    def __init__(self, url: str, token: str, home: Path, tmp: Path, log: Path):
        self.url, self.token, self.home, self.tmp, self.log = url, token, home, tmp, log

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell on the head's machine: the token in ~/.ray/auth_token, no RAY_* set."""
        return _clean_env(**{"HOME": str(self.home), **extra})

    def elsewhere_env(self, **extra: str) -> dict[str, str]:
        """A user's shell with no token file at home: the token must come from RAY_AUTH_*."""
        home = self.tmp / "client-home"
        home.mkdir(exist_ok=True)
        return _clean_env(**{"HOME": str(home), **extra})

    def cli(self, *args: str, env: dict | None = None, timeout: float = 90):
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            cwd=REPO,
            env=env if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        proc.seconds = time.monotonic() - start
        return proc


@pytest.fixture(scope="module")
def head(ray_cluster, tmp_path_factory):
    """The session's `ray start --head` (tests/servers.py): started the plain way, with a HOME of
    its own holding a token file, so it must be in token mode without RAY_AUTH_MODE."""
    import requests

    # Evidence that the plain `ray start --head` turned token mode on by itself.
    assert requests.get(f"{ray_cluster.dashboard}/api/jobs/", timeout=5).status_code == 401
    return Head(ray_cluster.dashboard, ray_cluster.token, ray_cluster.home, tmp_path_factory.mktemp("head"), ray_cluster.log)


def _assert_ok(proc, head: Head):
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
        f"\nhead log:\n{head.log.read_text()[-2000:]}"
    )


@pytest.mark.e2e
def test_submit_wait_runs_the_verb_and_streams_its_log(head, tmp_path):
    data = tmp_path / "data"
    job_id = f"sample-{uuid.uuid4().hex[:8]}"
    proc = head.cli(
        "submit", "--address", head.url, "--wait", "--id", job_id, "--json", "--",
        "sample-data", str(data), "--classes", "2", "--train-per-class", "2",
        "--val-per-class", "1",
    )  # fmt: skip
    _assert_ok(proc, head)
    result = json.loads(proc.stdout)
    assert result == {
        "submission_id": job_id,
        "address": head.url,
        "argv": result["argv"],
        "status": "SUCCEEDED",
    }
    # The verb's own output came back through the log stream...
    assert "wrote 4 training and 2 validation images" in proc.stderr
    # ...and it really ran (on this machine, the cluster's only node).
    assert len(list((data / "train").rglob("*.JPEG"))) == 4

    status = head.cli("jobs", "status", job_id, "--address", head.url, "--json")
    _assert_ok(status, head)
    info = json.loads(status.stdout)
    assert info["status"] == "SUCCEEDED"
    assert info["entrypoint"].startswith("python -m infra.cli sample-data ")
    assert info["metadata"]["incept_verb"] == "sample-data"

    listed = head.cli("jobs", "list", "--address", head.url, "--json")
    _assert_ok(listed, head)
    assert job_id in [j["submission_id"] for j in json.loads(listed.stdout)["jobs"]]

    logs = head.cli("jobs", "logs", job_id, "--address", head.url)
    _assert_ok(logs, head)
    assert "wrote 4 training and 2 validation images" in logs.stdout

    # The same ID again: refused in one line, nothing submitted.
    again = head.cli(
        "submit", "--address", head.url, "--id", job_id, "--",
        "sample-data", str(tmp_path / "other"),
    )  # fmt: skip
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().splitlines() == [
        f"incept submit: error: job {job_id} was already submitted (status SUCCEEDED); "
        f"not submitting it again: see `incept jobs status {job_id}` or choose another --id"
    ]
    assert not (tmp_path / "other").exists()


@pytest.mark.e2e
def test_failing_verb_exits_nonzero(head, tmp_path):
    # verify-shards on a folder with no manifest: the verb exits 2 inside the job.
    proc = head.cli(
        "submit", "--address", head.url, "--wait", "--", "verify-shards", str(tmp_path / "none")
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout


@pytest.mark.e2e
def test_token_from_a_file_and_missing_or_wrong_token(head, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(head.token + "\n")
    env = head.elsewhere_env(RAY_AUTH_TOKEN_PATH=str(token_file))
    # RAY_ADDRESS holds a GCS-style address here: --address must still win.
    env["RAY_ADDRESS"] = "127.0.0.1:1"
    _assert_ok(head.cli("jobs", "list", "--address", head.url, env=env), head)

    _assert_ok(head.cli("jobs", "list", "--address", head.url,
                        env=head.elsewhere_env(RAY_AUTH_TOKEN=head.token)), head)  # fmt: skip

    proc = head.cli("jobs", "list", "--address", head.url, env=head.elsewhere_env())
    assert proc.returncode == 2
    assert "requires a Ray auth token" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    wrong = head.elsewhere_env(RAY_AUTH_TOKEN="not-the-token")
    proc = head.cli("jobs", "list", "--address", head.url, env=wrong)
    assert proc.returncode == 2
    assert "rejected the Ray auth token" in proc.stderr


@pytest.mark.e2e
def test_unreachable_address_is_one_line_within_the_timeout(head):
    proc = head.cli("submit", "--address", f"http://127.0.0.1:{_free_port()}", "--",
                    "sample-data", "/nonexistent")  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("incept submit: error: cannot reach the Ray job server")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.seconds < 15


@pytest.mark.e2e
def test_unknown_job_id(head):
    proc = head.cli("jobs", "status", "no-such-job", "--address", head.url)
    assert proc.returncode == 2
    assert "no job no-such-job" in proc.stderr


@pytest.mark.e2e
def test_scheduled_submission_follows_its_job_instead_of_submitting_twice(head, monkeypatch, tmp_path):
    import datetime as dt

    from infra import schedule

    for name in list(os.environ):
        if name.startswith(("RAY_", "MLFLOW_")) or name == "INCEPT_WORKDIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    cron = "0 3 * * 0"
    # The retrain fails inside the job (no such source), which is all this test needs: a job.
    args = ["--src", str(tmp_path / "no-such-source"), "--config", str(tmp_path / "none.yaml")]
    runner = schedule.submit_runner(args, cron=cron, address=head.url, poll_s=0.5)
    due = schedule.Due(slot=dt.datetime(2025, 1, 12, 3, tzinfo=dt.timezone.utc), missed=0)
    first = runner(due)
    # A scheduler restarted mid-run asks for the same slot again: it must follow the same job.
    second = runner(due)
    assert first.job_id == second.job_id == schedule.job_id_for(due.slot, cron, args)
    assert first.outcome == second.outcome == "failed"
    assert first.detail == "job FAILED"
    client = jobs.connect(head.url)
    assert [j["submission_id"] for j in jobs.list_jobs(client)].count(first.job_id) == 1
    assert jobs.job_info(client, first.job_id)["metadata"]["incept_schedule_slot"] == due.slot.isoformat()
