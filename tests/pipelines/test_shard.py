"""End to end: `incept sample-data --quirks` -> `incept shard` -> `incept verify-shards`, on a real Ray."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from PIL import Image

from pipelines.sample_data import make_sample_set

pytestmark = pytest.mark.e2e

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Sample digits with ImageNet's quirks plus files that must be skipped."""
    root = tmp_path_factory.mktemp("src") / "data"
    make_sample_set(root, classes=4, train_per_class=10, val_per_class=3, quirks=True)
    bad = root / "train" / "n00000001"
    good = (bad / "n00000001_1.JPEG").read_bytes()
    (bad / "n00000001_90.JPEG").write_bytes(good[: len(good) // 3])
    (bad / "n00000001_91.JPEG").write_bytes(b"")
    (bad / "n00000001_92.JPEG").write_text("<html>not found</html>")
    return root


def shards_of(out):
    return {n: (out / n).stat() for n in os.listdir(out) if n.endswith(".tar")}


def read_tar(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_shard_verify_and_rerun(source, tmp_path, cli, cli_env):
    out = tmp_path / "shards"
    proc = cli("shard", "--src", str(source), "--split", "train", "--out", str(out), "--shard-size", "8", "--json", env=cli_env)
    result = json.loads(proc.stdout)
    assert (result["num_images"], result["num_shards"], result["num_skipped"]) == (43, 6, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == "train" and manifest["num_samples"] == 43
    assert manifest["classes"] == ["n00000000", "n00000001", "n00000002", "n00000003"]
    assert [s["name"] for s in manifest["shards"]] == [f"imagenet-train-{i:06d}.tar" for i in range(6)]
    assert {(s["source"].split("/")[-1], s["reason"].split(":")[0]) for s in manifest["skipped"]} == {
        ("n00000001_90.JPEG", "corrupt or truncated image"),
        ("n00000001_91.JPEG", "empty file"),
        ("n00000001_92.JPEG", "not an image Pillow can identify"),
    }

    members = {}
    for shard in manifest["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        members.update(read_tar(out / shard["name"]))
    keys = {name.split(".")[0] for name in members}
    assert len(keys) == 43 and len(members) == 129
    for key in keys:
        meta = json.loads(members[f"{key}.json"])
        label = int(members[f"{key}.cls"])
        assert manifest["classes"][label] == meta["wnid"]
        image = Image.open(io.BytesIO(members[f"{key}.jpg"]))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (meta["width"], meta["height"])
        original = (source / meta["source"]).read_bytes()
        is_quirk = int(meta["source"].split("_")[-1].split(".")[0]) > 10
        assert (members[f"{key}.jpg"] == original) != is_quirk  # RGB JPEGs are copied untouched

    assert cli("verify-shards", str(out), env=cli_env).stdout.strip() == f"6 shards checked in {out}: ok"

    # The same command again rewrites nothing.
    before = shards_of(out)
    again = json.loads(cli("shard", "--src", str(source), "--split", "train", "--out", str(out), "--shard-size", "8", "--json", env=cli_env).stdout)
    assert again["written"] == [] and len(again["kept"]) == 6
    assert {n: (s.st_ino, s.st_mtime_ns) for n, s in shards_of(out).items()} == {n: (s.st_ino, s.st_mtime_ns) for n, s in before.items()}

    # Damage one shard and lose another: verify names both; a rerun rewrites exactly those two.
    damaged, lost = out / "imagenet-train-000002.tar", out / "imagenet-train-000004.tar"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    lost.unlink()
    bad = cli("verify-shards", str(out), env=cli_env, check=False)
    assert bad.returncode == 1
    assert "imagenet-train-000002.tar" in bad.stderr and "imagenet-train-000004.tar: missing" in bad.stderr
    again = json.loads(cli("shard", "--src", str(source), "--split", "train", "--out", str(out), "--shard-size", "8", "--json", env=cli_env).stdout)
    assert sorted(again["written"]) == [damaged.name, lost.name]
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]
    cli("verify-shards", str(out), env=cli_env)

    # Same input and options, one CPU, another folder: byte-identical shards.
    other = tmp_path / "other"
    cli("shard", "--src", str(source), "--split", "train", "--out", str(other), "--shard-size", "8", "--num-cpus", "1", env=cli_env)
    assert json.loads((other / "manifest.json").read_text())["fingerprint"] == manifest["fingerprint"]


def test_kill_9_then_resume(source, tmp_path, cli, cli_env):
    out = tmp_path / "shards"
    args = [sys.executable, "-m", "infra.cli", "shard", "--src", str(source), "--split", "train", "--out", str(out), "--shard-size", "2"]
    proc = subprocess.Popen(args, cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    progress = out / "_progress"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.is_dir() and len(os.listdir(progress)) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # tasks the dead driver had started may still finish; their writes are atomic
    finished = {n: (s.st_ino, s.st_mtime_ns) for n, s in shards_of(out).items()}
    assert not (out / "manifest.json").exists() and len(finished) < 23
    (out / ".incept-tmp-0123-imagenet-train-000001.tar").write_bytes(b"half a shard")  # a killed writer's leftovers

    result = json.loads(cli(*args[3:], "--json", env=cli_env).stdout)
    assert result["num_shards"] == 23 and result["num_images"] == 43
    kept = set(result["kept"])
    assert kept and kept <= set(finished)
    after = shards_of(out)
    assert all((after[n].st_ino, after[n].st_mtime_ns) == finished[n] for n in kept)
    assert not [n for n in os.listdir(out) if n.startswith(".incept-tmp-")]
    cli("verify-shards", str(out), env=cli_env)


def test_user_errors_are_one_line(tmp_path, cli, cli_env):
    proc = cli("shard", "--src", str(tmp_path / "missing"), "--split", "train", "--out", str(tmp_path / "o"), env=cli_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("incept shard: error: no data set at")
    proc = cli("verify-shards", str(tmp_path), env=cli_env, check=False)
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr


def test_summary_line(source, tmp_path, cli, cli_env):
    proc = cli("shard", "--src", str(source), "--split", "val", "--out", str(tmp_path / "val"), env=cli_env)
    assert proc.stdout.strip() == "sharded 12 images into 1 shards (0 skipped)"
