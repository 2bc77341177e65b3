"""pipelines.storage: URIs that keep their options, atomic writes, clear errors; on a real S3 API server (moto).

The pure parts are unit tests. The rest talks to the session's S3 server over TCP, from this
process and from a fresh process that has credentials but no endpoint variable, as a worker on
another node has.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

from pipelines import manifest, storage
from pipelines.errors import UserError

pytestmark = pytest.mark.e2e


def _folder(s3) -> str:
    return s3.uri(f"storage-tests/{uuid.uuid4().hex[:8]}")


@pytest.mark.unit
def test_uri_keeps_its_options_and_takes_the_drivers_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.1.2.3:9000")
    located = storage.locate("s3://bucket/shards/train")
    assert located.path == "bucket/shards/train"
    assert located.uri == "s3://bucket/shards/train?endpoint_override=10.1.2.3:9000&scheme=http"
    assert storage.uri_of(located, "a.tar") == "s3://bucket/shards/train/a.tar?endpoint_override=10.1.2.3:9000&scheme=http"
    # The URI's own endpoint wins over the environment's, and its other options stay.
    given = storage.locate("s3://bucket/x?region=eu-west-1&endpoint_override=minio:9000&scheme=http")
    assert storage.uri_of(given, "m.json") == "s3://bucket/x/m.json?region=eu-west-1&endpoint_override=minio:9000&scheme=http"
    assert storage.uri_for(given, "bucket/runs/r/checkpoint_1") == "s3://bucket/runs/r/checkpoint_1?region=eu-west-1&endpoint_override=minio:9000&scheme=http"
    assert storage.locate("relative/dir").uri.endswith("/relative/dir")


@pytest.mark.unit
@pytest.mark.parametrize("uri", ["s3://AKIAXYZ:s3cr3t-value@bucket/x", "gs://tok3n-value@b/x", "s3://only-key@bucket"])
def test_credentials_in_a_uri_are_refused_without_echoing_them(uri):
    with pytest.raises(UserError, match="credentials in a storage URI are refused") as err:
        storage.locate(uri)
    assert "s3cr3t" not in str(err.value) and "tok3n" not in str(err.value) and "only-key" not in str(err.value)
    assert "\n" not in str(err.value)


def test_round_trip_and_listing(s3_env):
    location = storage.locate(_folder(s3_env))
    storage.make_dirs(location)
    storage.write_bytes(location, "a.bin", b"alpha")
    storage.write_bytes(location, "b.bin", b"beta")
    assert storage.read_bytes(location, "a.bin") == b"alpha"
    assert storage.list_names(location) == ["a.bin", "b.bin"]
    assert storage.size(location, "b.bin") == 4 and storage.exists(location, "a.bin")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(location, "missing.bin")


def test_a_write_that_fails_half_way_leaves_nothing_under_its_name(s3_env):
    location = storage.locate(_folder(s3_env))
    storage.write_bytes(location, "shard.tar", b"the old, complete shard")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with storage.atomic_output(location, "shard.tar") as out:
            out.write(b"x" * (6 << 20))  # past pyarrow's first multipart part: an upload is under way
            raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError):
        with storage.atomic_output(location, "new.tar") as out:
            out.write(b"half")
            raise RuntimeError("killed")
    assert storage.read_bytes(location, "shard.tar") == b"the old, complete shard"
    assert storage.list_names(location) == ["shard.tar"]  # no new.tar, no temporary left behind


def test_a_local_write_that_fails_leaves_nothing(tmp_path):
    location = storage.locate(str(tmp_path))
    with pytest.raises(RuntimeError):
        with storage.atomic_output(location, "m.json") as out:
            out.write(b"{")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_uri_opens_the_same_store_in_a_process_without_the_endpoint_variable(s3_env, monkeypatch):
    """What a Ray task on another node gets: the URI string, its own credentials, no AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)  # the driver's way of naming the endpoint
    location = storage.locate(f"s3://{s3_env.bucket}/storage-tests/{uuid.uuid4().hex[:8]}")
    storage.write_bytes(location, "note.txt", b"from the driver")
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    code = "import sys; from pipelines import storage; l = storage.locate(sys.argv[1]); print(storage.read_bytes(l, 'note.txt').decode())"
    out = subprocess.run([sys.executable, "-c", code, location.uri], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "from the driver"


def test_missing_bucket_and_unreachable_endpoint_are_one_line(s3_env):
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist at 127.0.0.1") as err:
        manifest.read(s3_env.uri("x").replace(s3_env.bucket, "no-such-bucket"))
    assert "aws s3 mb s3://no-such-bucket" in str(err.value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(UserError, match=f"at 127.0.0.1:{closed}: .*check the endpoint") as err:
        manifest.read(f"s3://{s3_env.bucket}/x?endpoint_override=127.0.0.1:{closed}&scheme=http")
    assert "\n" not in str(err.value)
