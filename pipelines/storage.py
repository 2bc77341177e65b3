"""Where shards and checkpoints live: a local path or any URI pyarrow has a filesystem for (s3://, gs://).

A URI keeps its options on every hop. pyarrow reads an S3-compatible endpoint from the URI
(`s3://bucket/path?endpoint_override=host:port&scheme=http`) or from `AWS_ENDPOINT_URL` in the
environment of the process that opens it; Ray tasks, Ray Train workers and evaluation actors on
other nodes see neither that variable nor anything else of the driver's environment. So
`locate()` writes the driver's endpoint into the URI's query, and every URI this module hands out
(`uri_of`, `uri_for`) carries it: a string that leaves this process opens the same store anywhere.
A pickled `Location.fs` carries its endpoint too (pyarrow pickles its options), and no
credentials when they come from the AWS chain.

Credentials never go into a URI: `s3://KEY:SECRET@bucket` would be logged, stored in MLflow params
and shipped to every node. It is refused; each node gets credentials from its own AWS chain
(environment, profile, instance role, Kubernetes secret): docs/operations.md.

Writes are atomic. Locally a file is written under a temporary name beside its destination and
renamed into place, so a reader never sees half a file. pyarrow's object-store output stream
completes its upload when it is closed, after an exception too, and has no abort: an object
written in place could appear half-written under its final name. So an object is written under a
temporary name, copied to its final name server-side once the block ended cleanly, and the
temporary is deleted either way. A killed writer leaves at most a temporary (or an incomplete
multipart upload, which is invisible), never a partial object under the final name.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.errors import UserError

TEMP_MARK = ".incept-tmp-"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # boto3's and pyarrow's order


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str  # filesystem-relative path of the folder (bucket/key for object stores)
    scheme: str = ""  # "" for local paths
    query: str = ""  # the URI's options (endpoint_override, scheme, region ...), driver's endpoint included

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def uri(self) -> str:
        return uri_for(self, self.path)

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def child(self, name: str) -> Location:
        return Location(self.fs, self.join(name), self.scheme, self.query)


def has_scheme(uri: str) -> bool:
    return "://" in uri


def redact(uri: str) -> str:
    """`uri` without any user:password part, fit for a message."""
    if not has_scheme(uri):
        return uri
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit((parts.scheme, "***@" + parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


def check_no_credentials(uri: str, what: str = "") -> None:
    """UserError for a URI with a user:password part (`s3://KEY:SECRET@bucket`), without echoing it."""
    if has_scheme(uri) and "@" in urllib.parse.urlsplit(uri).netloc:
        raise UserError(
            f"{what + ' ' if what else ''}{redact(uri)}: credentials in a storage URI are refused (they would "
            "reach logs, MLflow and every node); remove them and give each node its own (AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, a profile or an instance role: docs/operations.md)"
        )


def _canonical_query(scheme: str, query: str) -> str:
    """The URI's options, plus the driver's S3 endpoint when the URI names none."""
    options = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if scheme == "s3" and not any(k == "endpoint_override" for k, _ in options):
        endpoint = next((os.environ[k] for k in ENDPOINT_ENV if os.environ.get(k)), "")
        if endpoint:
            parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
            options.append(("endpoint_override", parsed.netloc))
            if parsed.scheme and not any(k == "scheme" for k, _ in options):
                options.append(("scheme", parsed.scheme))
    return urllib.parse.urlencode(options, safe=":/")


def locate(uri: str) -> Location:
    """The filesystem and path for a folder URI; plain paths are local."""
    if not has_scheme(uri):
        return Location(pafs.LocalFileSystem(), os.path.abspath(uri))
    check_no_credentials(uri)
    parts = urllib.parse.urlsplit(uri)
    query = _canonical_query(parts.scheme, parts.query)
    canonical = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    try:
        fs, path = pafs.FileSystem.from_uri(canonical)
    except Exception as err:  # pyarrow raises several types for bad or unsupported URIs
        raise UserError(f"cannot open {uri}: {err}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, path)
    return Location(fs, path.rstrip("/"), parts.scheme, query)


def uri_for(location: Location, path: str) -> str:
    """The URI of filesystem path `path` on `location`'s filesystem, options included."""
    if location.is_local:
        return path
    return f"{location.scheme}://{path}" + (f"?{location.query}" if location.query else "")


def uri_of(location: Location, name: str = "") -> str:
    """A URI (or local path) for a file in the folder, for readers on any node."""
    return uri_for(location, location.join(name) if name else location.path)


def endpoint(location: Location) -> str:
    """Where an object store is reached, for messages: the endpoint override, else the service default."""
    options = dict(urllib.parse.parse_qsl(location.query))
    return options.get("endpoint_override") or f"the default {location.scheme} endpoint"


def check(location: Location) -> None:
    """One clear UserError when an object store cannot be reached or its bucket does not exist."""
    if location.is_local:
        return
    bucket = location.path.split("/", 1)[0]
    try:
        info = location.fs.get_file_info(bucket)
    except OSError as err:
        raise _unreachable(location, err) from None
    if info.type == pafs.FileType.NotFound:
        raise UserError(
            f"bucket {bucket!r} does not exist at {endpoint(location)} ({location.uri}): "
            f"create it (aws s3 mb {location.scheme}://{bucket}) or fix the URI"
        )


def _unreachable(location: Location, err: BaseException) -> UserError:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not found" in text.lower() and "bucket" in text.lower():
        return UserError(f"{text} at {endpoint(location)} ({location.uri}): create the bucket or fix the URI")
    return UserError(
        f"cannot use {location.uri} at {endpoint(location)}: {text}; check the endpoint "
        "(?endpoint_override=HOST:PORT&scheme=http in the URI, or AWS_ENDPOINT_URL), the network and the credentials"
    )


@contextmanager
def _errors(location: Location):
    """Object-store failures (network, permissions, bucket) as one UserError line; a missing file stays FileNotFoundError."""
    try:
        yield
    except (FileNotFoundError, UserError):
        raise
    except OSError as err:
        if location.is_local:
            raise
        raise _unreachable(location, err) from None


def exists(location: Location, name: str) -> bool:
    with _errors(location):
        return location.fs.get_file_info(location.join(name)).type == pafs.FileType.File


def size(location: Location, name: str) -> int | None:
    with _errors(location):
        info = location.fs.get_file_info(location.join(name))
    return info.size if info.type == pafs.FileType.File else None


def list_names(location: Location) -> list[str]:
    """Names of the files directly in the folder (empty when it does not exist)."""
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    with _errors(location):
        return sorted(i.base_name for i in location.fs.get_file_info(selector) if i.type == pafs.FileType.File)


def list_folders(location: Location) -> list[str]:
    """Names of the folders directly in the folder (empty when it does not exist)."""
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    with _errors(location):
        return sorted(i.base_name for i in location.fs.get_file_info(selector) if i.type == pafs.FileType.Directory)


def make_dirs(location: Location, sub: str = "") -> None:
    with _errors(location):
        location.fs.create_dir(location.join(sub) if sub else location.path, recursive=True)


def read_bytes(location: Location, name: str) -> bytes:
    # compression=None: pyarrow would otherwise decompress a name ending in .gz, and the bytes
    # must be the stored ones (their sha256 is recorded).
    with _errors(location), location.fs.open_input_stream(location.join(name), compression=None) as f:
        return f.read()


@contextmanager
def atomic_output(location: Location, name: str):
    """A writable binary stream whose content appears under `name` only when the block ends cleanly."""
    final = location.join(name)
    folder, base = final.rsplit("/", 1)
    temp = f"{folder}/{TEMP_MARK}{uuid.uuid4().hex}-{base}"
    if not location.is_local:
        with _errors(location):
            stream = location.fs.open_output_stream(temp, compression=None)  # the bytes as given, whatever the name
        try:
            try:
                yield stream
            except BaseException:
                with contextlib.suppress(OSError):
                    stream.close()  # completes the temporary's upload: deleted below
                raise
            with _errors(location):
                stream.close()
                location.fs.copy_file(temp, final)  # server-side; the only write under the final name
        finally:
            with contextlib.suppress(OSError):
                location.fs.delete_file(temp)
        return
    try:
        with open(temp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_bytes(location: Location, name: str, data: bytes) -> None:
    with atomic_output(location, name) as f:
        f.write(data)


def remove_stale_temporaries(location: Location, sub: str = "") -> int:
    """Delete temporaries left by killed writers in the folder (or its subfolder); returns how many."""
    folder = location.child(sub) if sub else location
    stale = [n for n in list_names(folder) if n.startswith(TEMP_MARK)]
    with _errors(folder):
        for n in stale:
            folder.fs.delete_file(folder.join(n))
    return len(stale)
