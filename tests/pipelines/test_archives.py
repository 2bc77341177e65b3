import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import savemat

import imagenet_format as fmt
from pipelines import archives
from pipelines.archives import Member, find_devkit, index_tar, read_devkit, read_member, read_members, val_wnids
from pipelines.errors import UserError

pytestmark = pytest.mark.unit

CLASSES = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079"]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """5 classes x 6 training images and 12 validation images, as ImageNet ships them."""
    return fmt.write_archives(tmp_path_factory.mktemp("shipped"), classes=CLASSES, train_per_class=6, num_val=12, seed=1)


def payloads(n, size=300):
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, size + 37 * i, dtype=np.uint8).tobytes() for i in range(n)]


# --- The index --------------------------------------------------------------------------------


def test_flat_index_lists_the_val_files_in_order_and_reads_back_their_bytes(shipped):
    members = index_tar(shipped["val_archive"])
    assert [m.name for m in members] == shipped["val"]
    assert [m.size for m in members] == [len(shipped["images"][n]) for n in shipped["val"]]
    with tarfile.open(shipped["val_archive"]) as tar:
        assert [m.offset for m in members] == [i.offset_data for i in tar.getmembers()]
    assert [read_member(shipped["val_archive"], m) for m in members] == [shipped["images"][n] for n in shipped["val"]]


def test_nested_index_lists_inner_members_with_offsets_into_the_outer_file(shipped):
    members = index_tar(shipped["train_archive"], nested=True)
    expected = [f"{w}/{f}" for w in CLASSES for f in shipped["train"][w]]
    assert [m.name for m in members] == expected  # archive order: the inner tars' own order, not sorted
    assert expected != sorted(expected)
    offsets = []
    with tarfile.open(shipped["train_archive"]) as outer:
        for info in outer.getmembers():
            with tarfile.open(fileobj=outer.extractfile(info)) as inner:
                offsets += [info.offset_data + i.offset_data for i in inner.getmembers()]
    assert [m.offset for m in members] == offsets
    assert list(read_members(shipped["train_archive"], members)) == [shipped["images"][n] for n in expected]


def test_the_quirky_images_are_in_the_archives_like_the_real_set(shipped):
    from PIL import Image

    kinds = {}
    for name, kind in shipped["quirks"].items():
        image = Image.open(io.BytesIO(shipped["images"][name]))
        kinds[kind] = (image.format, image.mode)
        assert name.endswith(".JPEG")
    assert kinds == {"greyscale": ("JPEG", "L"), "cmyk": ("JPEG", "CMYK"), "png": ("PNG", "RGB")}
    assert len(set(shipped["images"].values())) == len(shipped["images"])  # every image differs


LONG = "d" * 60 + "/" + "e" * 70 + ".JPEG"  # > 100 characters: a GNU long name, a PAX path, a ustar prefix


@pytest.mark.parametrize("fmt_name", ["USTAR", "GNU", "PAX"])
def test_ustar_gnu_and_pax_archives_index_alike(tmp_path, fmt_name):
    form = getattr(tarfile, f"{fmt_name}_FORMAT")
    pax = {"comment": "an extended header before every member"} if fmt_name == "PAX" else None
    names = ["a.JPEG", "./b.JPEG", LONG, "c.JPEG"]
    data = payloads(len(names))
    flat = fmt.write_tar(tmp_path / "flat.tar", list(zip(names, data)), format=form, dirs=("d",), pax_headers=pax)
    members = index_tar(flat)
    assert [m.name for m in members] == ["a.JPEG", "b.JPEG", LONG, "c.JPEG"]  # "./" dropped, the directory skipped
    assert [read_member(flat, m) for m in members] == data

    inner = [(f"./n{k}.tar", fmt.tar_bytes(list(zip(names, data)), format=form, pax_headers=pax)) for k in range(2)]
    nested = fmt.write_tar(tmp_path / "nested.tar", inner, format=form, pax_headers=pax)
    members = index_tar(nested, nested=True)
    assert [m.name for m in members] == [f"n{k}/{n}" for k in range(2) for n in ["a.JPEG", "b.JPEG", LONG, "c.JPEG"]]
    assert [read_member(nested, m) for m in members] == data * 2


def test_only_regular_files_are_listed(tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind in [("dir", tarfile.DIRTYPE), ("link", tarfile.SYMTYPE), ("fifo", tarfile.FIFOTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "x.JPEG" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info)
        info = tarfile.TarInfo("x.JPEG")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    (tmp_path / "a.tar").write_bytes(out.getvalue())
    assert index_tar(tmp_path / "a.tar") == [Member("x.JPEG", 4 * 512, 3)]  # after 4 headers


def test_an_empty_archive_has_no_members(tmp_path):
    assert index_tar(fmt.write_tar(tmp_path / "empty.tar", [])) == []


def test_the_index_pass_does_not_read_member_data(tmp_path, monkeypatch):
    data = payloads(40, size=64 * 1024)
    flat = fmt.write_tar(tmp_path / "flat.tar", [(f"f{i}.JPEG", d) for i, d in enumerate(data)])
    inner = [(f"n{k}.tar", fmt.tar_bytes([(f"f{i}.JPEG", d) for i, d in enumerate(data[k::4])])) for k in range(4)]
    nested = fmt.write_tar(tmp_path / "nested.tar", inner)
    read = []

    class Counting(io.FileIO):
        def read(self, n=-1):
            chunk = super().read(n)
            read.append(len(chunk))
            return chunk

    monkeypatch.setattr(archives, "_open_archive", lambda path: Counting(path, "rb"))
    for path, is_nested in [(flat, False), (nested, True)]:
        read.clear()
        assert len(index_tar(path, nested=is_nested)) == 40
        # Per member: its 512-byte header and tarfile's 1-byte end-of-data probe; per tar, the end
        # block, read twice (by tarfile, then by the check that it is one).
        headers, tars = (44, 5) if is_nested else (40, 1)
        assert sum(read) <= headers * (512 + 1) + tars * 2 * 512
        assert sum(read) < os.path.getsize(path) / 50  # 64 KB members: about 1.1% of the file


# --- Bad archives -----------------------------------------------------------------------------


def test_a_missing_empty_or_non_tar_archive_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no archive at .*missing.tar"):
        index_tar(tmp_path / "missing.tar")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(UserError, match="empty.tar is empty: download it again"):
        index_tar(tmp_path / "empty.tar")
    with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar is not a tar archive .*: download it again"):
        index_tar(fmt.write_not_a_tar(tmp_path / "ILSVRC2012_img_val.tar"))


def test_an_inner_file_that_is_not_a_tar_is_named(tmp_path):
    good = fmt.tar_bytes([("a.JPEG", b"a")])
    path = fmt.write_tar(tmp_path / "train.tar", [("n1.tar", good), ("n2.tar", b"not a tar" * 100)])
    with pytest.raises(UserError, match=r"train.tar: inner tar n2.tar is not a tar .*download it again"):
        index_tar(path, nested=True)


def flat_cut_points(path):
    """(cut offset, last whole member or None) at each kind of place a download can stop."""
    members = index_tar(path)
    m0, m1, m2 = members[:3]
    end = m2.offset + -(-m2.size // 512) * 512  # the end-of-archive blocks start here (3 members)
    return [
        (m0.offset + 10, None),  # inside the first member's data
        (m0.offset - 200, None),  # inside the first header is only "not a tar" at offset 0; here at 312 bytes
        (m1.offset - 512 + 100, m0.name),  # inside the second header
        (m1.offset - 512, m0.name),  # at a header boundary: no end-of-archive block
        (m1.offset + m1.size - 1, m0.name),  # one byte short of the second member's data
        (m1.offset + m1.size + 1, m1.name),  # in the second member's padding: its data is whole
        (end, m2.name),  # every member whole, no end-of-archive block
        (end + 100, m2.name),  # the end block cut short
    ]


def test_a_flat_archive_cut_anywhere_names_its_last_whole_member(tmp_path):
    src = fmt.write_tar(tmp_path / "src.tar", [(f"ILSVRC2012_val_{i:08d}.JPEG", d) for i, d in enumerate(payloads(3), 1)])
    for cut, last in flat_cut_points(src):
        path = fmt.truncated_copy(src, tmp_path / "ILSVRC2012_img_val.tar", cut)
        if cut < 512:
            with pytest.raises(UserError, match=r"ILSVRC2012_img_val.tar is not a tar archive \(truncated header\)"):
                index_tar(path)
            continue
        after = f"after member {last}" if last else "before its first member"
        with pytest.raises(UserError, match=rf"^{path} is truncated or corrupt {after} \(.*\): download it again$"):
            index_tar(path)
    end = flat_cut_points(src)[-2][0]
    assert len(index_tar(fmt.truncated_copy(src, tmp_path / "one-end-block.tar", end + 512))) == 3


def test_a_garbled_header_after_the_first_is_an_error_not_a_silent_end(tmp_path):
    path = tmp_path / "ILSVRC2012_img_val.tar"
    fmt.write_tar(path, [(f"m{i}.JPEG", d) for i, d in enumerate(payloads(3))])
    m1 = index_tar(path)[1]
    data = bytearray(path.read_bytes())
    data[m1.offset - 512 : m1.offset - 412] = b"\xff" * 100  # tarfile stops here without a word
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"truncated or corrupt after member m0.JPEG \(no end-of-archive block"):
        index_tar(path)


def test_a_train_archive_cut_inside_an_inner_tar_names_the_inner_tar_and_the_last_whole_member(shipped, tmp_path):
    members = index_tar(shipped["train_archive"], nested=True)
    by_class = {w: [m for m in members if m.name.startswith(w + "/")] for w in CLASSES}
    second = by_class[CLASSES[1]]
    path = tmp_path / "ILSVRC2012_img_train.tar"

    fmt.truncated_copy(shipped["train_archive"], path, second[2].offset + 5)
    with pytest.raises(UserError, match=rf"^{path} is truncated or corrupt in inner tar {CLASSES[1]}.tar after member {second[1].name} \("):
        index_tar(path, nested=True)

    # Cut inside the second inner tar's first header: the last whole member is the first inner tar's last.
    fmt.truncated_copy(shipped["train_archive"], path, second[0].offset - 300)
    with pytest.raises(UserError, match=rf"^{path} is truncated or corrupt after member {by_class[CLASSES[0]][-1].name} \("):
        index_tar(path, nested=True)

    # Cut after the second inner tar's end blocks but before its outer member ends (its record padding).
    with tarfile.open(shipped["train_archive"]) as tar:
        outer = tar.getmembers()[1]
    fmt.truncated_copy(shipped["train_archive"], path, outer.offset_data + outer.size - 10)
    with pytest.raises(UserError, match=rf"^{path} is truncated or corrupt after member {second[-1].name} \("):
        index_tar(path, nested=True)


def test_a_broken_inner_tar_in_a_whole_train_archive_is_named(tmp_path):
    data = payloads(3)
    inner = fmt.tar_bytes([(f"n2_{i}.JPEG", d) for i, d in enumerate(data)])
    cut = 512 + len(data[0]) + 100  # inside the second member's header
    outer = [("n1.tar", fmt.tar_bytes([("n1_0.JPEG", b"x")])), ("n2.tar", inner[:cut])]
    path = fmt.write_tar(tmp_path / "ILSVRC2012_img_train.tar", outer)
    with pytest.raises(UserError, match=r"ILSVRC2012_img_train.tar is truncated or corrupt in inner tar n2.tar after member n2/n2_0.JPEG"):
        index_tar(path, nested=True)


def test_read_member_past_the_end_of_a_changed_file_is_a_user_error(tmp_path):
    path = fmt.write_tar(tmp_path / "a.tar", [("a.JPEG", b"a" * 1000)])
    member = index_tar(path)[0]
    fmt.truncated_copy(path, path, 900)
    with pytest.raises(UserError, match=r"a.tar is shorter than its index: member a.JPEG needs bytes 512-1512"):
        read_member(path, member)


# --- The devkit -------------------------------------------------------------------------------


def test_the_devkit_archive_and_folder_give_the_leaves_by_id_and_the_ground_truth(shipped, tmp_path):
    from_archive = read_devkit(shipped["devkit_archive"])
    from_folder = read_devkit(fmt.write_devkit_folder(tmp_path, shipped["devkit_files"]))
    assert from_archive == from_folder
    by_id = sorted(shipped["ids"], key=shipped["ids"].get)
    assert [(s.ilsvrc_id, s.wnid, s.words) for s in from_archive.synsets] == [
        (i, w, shipped["words"][w]) for i, w in enumerate(by_id, 1)
    ]
    assert by_id != sorted(by_id)  # the non-leaf synsets (IDs 6, 7) are left out; the leaves keep the devkit's order
    assert from_archive.val_ground_truth == shipped["val_ground_truth"]
    assert val_wnids(from_archive) == shipped["val_wnids"]


def test_find_devkit_prefers_the_archive_then_the_folder(shipped, tmp_path):
    assert find_devkit(tmp_path) is None
    folder = fmt.write_devkit_folder(tmp_path, shipped["devkit_files"])
    assert find_devkit(tmp_path) == folder
    archive = fmt.write_devkit_archive(tmp_path / archives.DEVKIT_ARCHIVE, shipped["devkit_files"])
    assert find_devkit(tmp_path) == archive


def test_a_devkit_without_meta_mat_names_what_is_missing(shipped, tmp_path):
    files = {archives.GROUND_TRUTH: shipped["devkit_files"][archives.GROUND_TRUTH]}
    archive = fmt.write_devkit_archive(tmp_path / archives.DEVKIT_ARCHIVE, files)
    with pytest.raises(UserError, match=r"has no ILSVRC2012_devkit_t12/data/meta.mat: download it again"):
        read_devkit(archive)
    folder = fmt.write_devkit_folder(tmp_path, files)
    with pytest.raises(UserError, match=r"ILSVRC2012_devkit_t12 has no data/meta.mat: extract all of ILSVRC2012_devkit_t12.tar.gz"):
        read_devkit(folder)
    with pytest.raises(UserError, match="no devkit at"):
        read_devkit(tmp_path / "nowhere")


def with_meta(shipped, tmp_path, meta: bytes) -> str:
    return fmt.write_devkit_archive(tmp_path / archives.DEVKIT_ARCHIVE, {**shipped["devkit_files"], archives.META_MAT: meta})


def test_a_meta_mat_without_synsets_is_a_user_error(shipped, tmp_path):
    out = io.BytesIO()
    savemat(out, {"classes": np.arange(5)})
    with pytest.raises(UserError, match=r"data/meta.mat has no struct array 'synsets'"):
        read_devkit(with_meta(shipped, tmp_path, out.getvalue()))
    with pytest.raises(UserError, match=r"data/meta.mat is not a MATLAB file"):
        read_devkit(with_meta(shipped, tmp_path, b"not a mat file" * 20))


def test_a_ground_truth_id_that_is_not_a_leaf_is_a_user_error(shipped, tmp_path):
    truth = b"1\n2\n6\n"  # 6 is a non-leaf synset's ID
    files = {**shipped["devkit_files"], archives.GROUND_TRUTH: truth}
    archive = fmt.write_devkit_archive(tmp_path / archives.DEVKIT_ARCHIVE, files)
    with pytest.raises(UserError, match=r"ILSVRC2012_validation_ground_truth.txt line 3: '6' is not the ILSVRC2012_ID of one of the 5 leaf"):
        read_devkit(archive)


def test_a_devkit_that_is_not_an_archive_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"is not a readable ILSVRC2012_devkit_t12.tar.gz .*download it again"):
        read_devkit(fmt.write_not_a_tar(tmp_path / archives.DEVKIT_ARCHIVE))


# --- The generator's extracted tree -------------------------------------------------------------


@pytest.mark.parametrize("val", ["classes", "flat"])
def test_the_extracted_tree_holds_the_same_bytes_and_labels(shipped, tmp_path, val):
    from pipelines.imagenet import class_words, list_split

    root = fmt.write_extracted(tmp_path, shipped, val=val)
    for split in ("train", "val"):
        listing = list_split(root, split)
        assert listing.classes == sorted(CLASSES)
        for s in listing.samples:
            key = s.source.split("/", 1)[1] if split == "train" else Path(s.source).name
            assert Path(root, s.source).read_bytes() == shipped["images"][key]
    by_file = dict(zip(shipped["val"], shipped["val_wnids"]))
    assert {Path(s.source).name: s.wnid for s in list_split(root, "val").samples} == by_file
    assert class_words(root) == shipped["words"]
