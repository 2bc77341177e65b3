import io
import tarfile

import pytest

from pipelines.tar_writer import ShardWriter

pytestmark = pytest.mark.unit


def write(samples):
    out = io.BytesIO()
    writer = ShardWriter(out)
    for key, members in samples:
        writer.add(key, members)
    size, sha = writer.close()
    return out.getvalue(), size, sha


def test_same_samples_same_bytes_and_hash():
    samples = [("a", {"jpg": b"\xff\xd8x", "cls": b"3", "json": b"{}"}), ("b", {"cls": b"1", "jpg": b"y"})]
    first, size, sha = write(samples)
    second, _, sha2 = write(samples)
    assert first == second and sha == sha2 and size == len(first)
    import hashlib

    assert sha == hashlib.sha256(first).hexdigest()


def test_members_are_key_dot_ext_with_fixed_metadata():
    data, _, _ = write([("k1", {"jpg": b"J", "cls": b"7"})])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["k1.cls", "k1.jpg"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" and m.mode == 0o444 for m in members)
        assert tar.extractfile("k1.cls").read() == b"7"


def test_webdataset_reads_the_samples_back():
    import webdataset as wds

    data, _, _ = write([("a", {"jpg": b"J1", "cls": b"3"}), ("b", {"jpg": b"J2", "cls": b"4"})])
    samples = list(wds.tariterators.tar_file_expander([{"stream": io.BytesIO(data), "url": "mem"}]))
    grouped = list(wds.tariterators.group_by_keys(samples))
    assert [(s["__key__"], s["jpg"], s["cls"]) for s in grouped] == [("a", b"J1", b"3"), ("b", b"J2", b"4")]
