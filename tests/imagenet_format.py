"""Small data sets written in the exact formats ImageNet ships in (ILSVRC-2012), for tests.

    ROOT/ILSVRC2012_img_train.tar       a tar of <wnid>.tar inner tars, each of <wnid>_<n>.JPEG
    ROOT/ILSVRC2012_img_val.tar         flat ILSVRC2012_val_%08d.JPEG, 1-based
    ROOT/ILSVRC2012_devkit_t12.tar.gz   ILSVRC2012_devkit_t12/data/meta.mat (struct array `synsets`)
                                        and .../data/ILSVRC2012_validation_ground_truth.txt

The image bytes are made once (`write_archives` returns them) and `write_extracted` writes the same
bytes as the extracted tree, so shards made from either form can be compared byte for byte. Like
the real set, the training images include a greyscale JPEG, a CMYK JPEG and a PNG named .JPEG, and
the leaf synsets' IDs are not in sorted wnid order. Sizes are tiny: 5 classes x 6 images take
about 20 ms to write.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from pipelines.archives import DEVKIT_ARCHIVE, DEVKIT_FOLDER, GROUND_TRUTH, META_MAT, TRAIN_ARCHIVE, VAL_ARCHIVE

MTIME = 1_336_000_000  # May 2012, when the archives were made; fixed so the bytes depend on the seed only
# Non-leaf synsets as meta.mat has them after the 1,000 leaves (860 of them, IDs 1001-1860).
NON_LEAVES = (
    ("n00001740", "entity", "that which is perceived or known or inferred to have its own distinct existence"),
    ("n00021939", "artifact, artefact", "a man-made object taken as a whole"),
)
SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images")


def words_of(wnid: str) -> str:
    return f"thing {wnid}, {wnid[1:]} object"  # "a, b" like the real "tench, Tinca tinca"


# --- Images -------------------------------------------------------------------------------------


def image_bytes(rng: np.random.Generator, size: tuple[int, int], kind: str = "rgb") -> bytes:
    """A small real image: a colour gradient with noise, encoded as `kind` (rgb, greyscale, cmyk JPEG; png)."""
    w, h = size
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, w)[None, :, None]
    pixels = a * (1 - t) + b * t + rng.normal(0, 20, (h, w, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    out = io.BytesIO()
    if kind == "png":
        image.save(out, "PNG")
    else:
        mode = {"rgb": "RGB", "greyscale": "L", "cmyk": "CMYK"}[kind]
        image.convert(mode).save(out, "JPEG", quality=int(rng.integers(70, 96)))
    return out.getvalue()


def _size(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[int, int]:
    w, h = image_size
    return int(w + rng.integers(-w // 4, w // 4 + 1)), int(h + rng.integers(-h // 4, h // 4 + 1))


# --- Tars ---------------------------------------------------------------------------------------


def tar_bytes(
    members: list[tuple[str, bytes]],
    *,
    format: int = tarfile.GNU_FORMAT,
    dirs: tuple[str, ...] = (),
    pax_headers: dict[str, str] | None = None,
) -> bytes:
    """A tar of `members` (name, bytes) in the order given, after directory entries `dirs`.

    GNU format by default, as ImageNet's tars are. `pax_headers` (PAX format) are written as a global
    header and on every member, so each member has an extended header before it.
    """
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format, pax_headers=pax_headers or {}) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            if pax_headers:
                info.pax_headers = dict(pax_headers)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_tar(path, members: list[tuple[str, bytes]], **kwargs) -> str:
    Path(path).write_bytes(tar_bytes(members, **kwargs))
    return str(path)


def truncated_copy(src, dst, size: int) -> str:
    """The first `size` bytes of `src`, as a download cut short."""
    with open(src, "rb") as f:
        Path(dst).write_bytes(f.read(size))
    return str(dst)


def write_not_a_tar(path) -> str:
    """A file longer than a tar header that is no tar (an HTML error page saved under the archive's name)."""
    Path(path).write_bytes(b"<html><body>403 Forbidden: log in to download ImageNet</body></html>\n" * 20)
    return str(path)


# --- The devkit ---------------------------------------------------------------------------------


def meta_mat_bytes(leaf_ids: dict[str, int], train_counts: dict[str, int]) -> bytes:
    """meta.mat: the struct array `synsets` (N x 1, as MATLAB saves it) with the real file's eight fields.

    The leaves come first by ID (1..N) and the non-leaf synsets after them, with the next IDs.
    """
    n = len(leaf_ids)
    rows = [
        (i, wnid, words_of(wnid), f"a made-up synset {wnid} for tests", 0, np.zeros((0,), np.uint16), 0, train_counts.get(wnid, 0))
        for wnid, i in sorted(leaf_ids.items(), key=lambda kv: kv[1])
    ]
    leaves_per_parent = -(-n // len(NON_LEAVES))
    for k, (wnid, words, gloss) in enumerate(NON_LEAVES):
        children = np.arange(k * leaves_per_parent + 1, min(n, (k + 1) * leaves_per_parent) + 1, dtype=np.uint16)
        rows.append((n + k + 1, wnid, words, gloss, max(1, len(children)), children, k + 1, 0))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in SYNSET_FIELDS])
    for r, (i, wnid, words, gloss, num_children, children, height, count) in enumerate(rows):
        synsets[r, 0] = (np.uint16(i), wnid, words, gloss, np.uint16(num_children), children, np.uint16(height), np.uint16(count))
    out = io.BytesIO()
    savemat(out, {"synsets": synsets})
    return out.getvalue()


def devkit_files(leaf_ids: dict[str, int], train_counts: dict[str, int], ground_truth: list[int]) -> dict[str, bytes]:
    """The devkit's two data files, by path under ILSVRC2012_devkit_t12/."""
    return {
        META_MAT: meta_mat_bytes(leaf_ids, train_counts),
        GROUND_TRUTH: "".join(f"{i}\n" for i in ground_truth).encode(),
    }


def write_devkit_archive(path, files: dict[str, bytes]) -> str:
    """ILSVRC2012_devkit_t12.tar.gz holding `files` (path under the devkit folder -> bytes) and a readme."""
    members = [(f"{DEVKIT_FOLDER}/readme.txt", b"ILSVRC2012 development kit (test copy)\n")]
    members += [(f"{DEVKIT_FOLDER}/{rel}", data) for rel, data in files.items()]
    data = tar_bytes(members, dirs=(DEVKIT_FOLDER, f"{DEVKIT_FOLDER}/data"))
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(data)
    return str(path)


def write_devkit_folder(root, files: dict[str, bytes]) -> str:
    """The extracted devkit: ROOT/ILSVRC2012_devkit_t12/data/..."""
    folder = Path(root) / DEVKIT_FOLDER
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return str(folder)


# --- A whole data set ---------------------------------------------------------------------------


def write_archives(
    root,
    *,
    classes: list[str],
    train_per_class: int,
    num_val: int,
    seed: int = 0,
    image_size: tuple[int, int] = (40, 32),
    quirks: bool = True,
    format: int = tarfile.GNU_FORMAT,
) -> dict:
    """Writes the three archives under ROOT; returns what they hold.

    Returned keys: root; train_archive, val_archive, devkit_archive (paths); classes (as given);
    train (wnid -> file names in inner-tar order, which is not sorted); val (file names, image 1 first);
    val_wnids and val_ground_truth (per val image); ids (wnid -> ILSVRC2012_ID, 1..N not in sorted
    wnid order); words (wnid -> words); images (member name as `archives.index_tar` gives it ->
    bytes); quirks (member name -> "greyscale" | "cmyk" | "png"); devkit_files (path under the
    devkit folder -> bytes).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # IDs in a shuffled order, never the sorted one: code that assumes ID order = wnid order must fail.
    order = [classes[i] for i in rng.permutation(len(classes))]
    if len(order) > 1 and order == sorted(order):
        order.reverse()
    ids = {wnid: i + 1 for i, wnid in enumerate(order)}

    # Train file numbers are sparse and the inner tars list them unsorted, as in the real archive.
    train = {
        wnid: [f"{wnid}_{n}.JPEG" for n in rng.choice(np.arange(1, 20_000), train_per_class, replace=False)]
        for wnid in classes
    }
    train_names = [f"{wnid}/{file}" for wnid in classes for file in train[wnid]]
    val = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, num_val + 1)]
    val_wnids = [classes[k] for k in rng.permutation(np.arange(num_val) % len(classes))] if num_val else []

    quirk_of: dict[str, str] = {}
    if quirks:
        spots = rng.choice(len(train_names), min(3, len(train_names)), replace=False)
        quirk_of.update({train_names[s]: kind for s, kind in zip(spots, ("greyscale", "cmyk", "png"))})
        if val:
            quirk_of[val[int(rng.integers(len(val)))]] = "greyscale"
    images = {name: image_bytes(rng, _size(rng, image_size), quirk_of.get(name, "rgb")) for name in train_names + val}

    train_archive = root / TRAIN_ARCHIVE
    inner = [(f"{wnid}.tar", tar_bytes([(f, images[f"{wnid}/{f}"]) for f in train[wnid]], format=format)) for wnid in classes]
    write_tar(train_archive, inner, format=format)
    val_archive = write_tar(root / VAL_ARCHIVE, [(name, images[name]) for name in val], format=format)

    ground_truth = [ids[w] for w in val_wnids]
    files = devkit_files(ids, {w: len(train[w]) for w in classes}, ground_truth)
    devkit_archive = write_devkit_archive(root / DEVKIT_ARCHIVE, files)
    return {
        "root": str(root),
        "train_archive": str(train_archive),
        "val_archive": val_archive,
        "devkit_archive": devkit_archive,
        "classes": list(classes),
        "train": train,
        "val": val,
        "val_wnids": val_wnids,
        "val_ground_truth": ground_truth,
        "ids": ids,
        "words": {w: words_of(w) for w in classes},
        "images": images,
        "quirks": quirk_of,
        "devkit_files": files,
    }


def write_extracted(root, info: dict, *, val: str = "classes", synset_mapping: bool = True) -> str:
    """The same images as the extracted tree: ROOT/train/<wnid>/<file> and the val split as

    val="classes": ROOT/val/<wnid>/<file> (sorted into class folders), or
    val="flat":    ROOT/val/<file> with ROOT/LOC_val_solution.csv (Kaggle's ImageId,PredictionString).
    synset_mapping: also ROOT/LOC_synset_mapping.txt ("<wnid> <words>", sorted by wnid, as Kaggle's).
    """
    if val not in ("classes", "flat"):
        raise ValueError(f"val must be 'classes' or 'flat', not {val!r}")
    root = Path(root)
    for wnid, files in info["train"].items():
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for file in files:
            (root / "train" / wnid / file).write_bytes(info["images"][f"{wnid}/{file}"])
    (root / "val").mkdir(parents=True, exist_ok=True)
    rows = []
    for file, wnid in zip(info["val"], info["val_wnids"]):
        folder = root / "val" / wnid if val == "classes" else root / "val"
        folder.mkdir(exist_ok=True)
        (folder / file).write_bytes(info["images"][file])
        rows.append(f"{Path(file).stem},{wnid} 1 1 10 10\n")
    if val == "flat":
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    if synset_mapping:
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {info['words'][w]}\n" for w in sorted(info["classes"])))
    return str(root)
