"""Where photos are stored: a folder on this machine or an S3-compatible object store (``s3://BUCKET/PREFIX``).

This is the one module that knows stores. The rest of ``data/`` sees a
listing and a way to open bytes: ``list_objects`` (keys, sizes, ETags under a
prefix), ``read_object`` / ``open_file`` (the bytes of one photo),
``stamp`` (what changes when a photo changes). An object's location is an
``ObjectURL``: a ``str`` (it prints, pickles, goes into JSON and travels to
Ray workers as the URL itself) with the few path-like members the dataset
code uses (``name``, ``suffix``, ``relative_to``, ``/``), so code that takes a
photo's location does not need to know which store holds it.

The object store is reached through fsspec's ``AbstractFileSystem`` (s3fs):
credentials, region and endpoint come from the standard AWS environment and
configuration (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/config``, an instance role; ``AWS_ENDPOINT_URL`` for S3-compatible
stores such as MinIO). Nothing here imports s3fs until an ``s3://`` location is
used. Every failure becomes one line: ``DatasetError`` for a listing,
``ImageError`` for one photo (skipped and counted like an unreadable file).
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Optional, Union

from toptune_core.errors import DatasetError, ImageError

SCHEME = "s3://"
#: The environment variables that decide which store and which identity a connection uses.
_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE")
#: Bytes read per request when only a photo's header is needed (``open_file``).
HEADER_BLOCK = 256 * 1024


class ObjectURL(str):
    """``s3://bucket/key``: an object (or a prefix) in an object store, normalised (no ``//``, no trailing ``/``)."""

    def __new__(cls, url: str):
        text = str(url).strip()
        if not text.lower().startswith(SCHEME):
            raise DatasetError(f"'{text[:120]}' is not an object-store URL; write s3://BUCKET/PREFIX.")
        parts = [p for p in text[len(SCHEME):].split("/") if p]
        if not parts:
            raise DatasetError("The URL has no bucket; write s3://BUCKET/PREFIX.")
        if any(p in (".", "..") for p in parts):
            raise DatasetError(f"'{text[:120]}' has '.' or '..' in it; write the prefix itself.")
        return super().__new__(cls, SCHEME + "/".join(parts))

    @property
    def bucket(self) -> str:
        return self[len(SCHEME):].split("/", 1)[0]

    @property
    def key(self) -> str:
        """The object key (or the prefix) inside the bucket; '' for the bucket itself."""
        rest = self[len(SCHEME):].split("/", 1)
        return rest[1] if len(rest) > 1 else ""

    @property
    def path(self) -> str:
        """``bucket/key``, as fsspec names it."""
        return self[len(SCHEME):]

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def as_posix(self) -> str:
        return str(self)

    def __truediv__(self, other: str) -> "ObjectURL":
        return ObjectURL(f"{self}/{other}")

    def is_relative_to(self, root: str) -> bool:
        root = str(root).rstrip("/")
        return self == root or self.startswith(root + "/")

    def relative_to(self, root: str) -> PurePosixPath:
        """The part of the key below ``root`` (an ``ObjectURL`` prefix), as a relative posix path."""
        if not self.is_relative_to(root):
            raise ValueError(f"{self!r} is not under {str(root)!r}")
        return PurePosixPath(self[len(str(root).rstrip("/")) + 1:] or ".")


Location = Union[Path, ObjectURL]


def is_url(location) -> bool:
    """True for an object-store location (``s3://...``, as an ``ObjectURL`` or a plain string)."""
    return isinstance(location, str) and location[:len(SCHEME)].lower() == SCHEME


def location(text: Union[str, os.PathLike]) -> Location:
    """``text`` as a location: an ``ObjectURL`` for ``s3://...``, else a local ``Path`` (``~`` expanded)."""
    return ObjectURL(text) if is_url(text) else Path(text).expanduser()


def portable(source):
    """A location another process or machine can open: an object URL as it is, a file path made absolute."""
    return str(source) if is_url(source) else str(Path(source).absolute())


def split_roots(text: str) -> list[str]:
    """An ``os.pathsep``-separated list of folders and ``s3://`` prefixes (the ``:`` after ``s3`` is kept)."""
    pieces = text.split(os.pathsep)
    out: list[str] = []
    for piece in pieces:
        if out and out[-1].lower() == "s3" and piece.startswith("//"):
            out[-1] += os.pathsep + piece
        else:
            out.append(piece)
    return [p.strip() for p in out if p.strip()]


# --- the object store ---------------------------------------------------------------------------------

_FILESYSTEMS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def filesystem():
    """The fsspec filesystem of the object store (s3fs), one per process and AWS environment.

    Listings are never cached (a dataset read twice is listed twice, so a changed object is seen)."""
    key = (os.getpid(),) + tuple(os.environ.get(k) for k in _AWS_ENV)
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            try:
                import s3fs
            except ImportError:
                raise DatasetError("Reading s3:// datasets needs the s3fs package: pip install -r "
                                   "requirements.txt.") from None
            fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False,
                                   config_kwargs={"connect_timeout": 10, "read_timeout": 60,
                                                  "retries": {"max_attempts": 3}})
            _FILESYSTEMS[key] = fs
        return fs


def _why(e: BaseException) -> str:
    """A store error in a few plain words (fsspec turns S3's error codes into Python's OSErrors)."""
    text = " ".join(str(e).split())[:160]
    name = type(e).__name__
    if "NoCredentials" in name or "Unable to locate credentials" in text:
        return ("no credentials were found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or "
                "run on a machine with a role)")
    if "EndpointConnection" in name or "Could not connect" in text or isinstance(e, ConnectionError):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        return f"the store at {endpoint} cannot be reached; check AWS_ENDPOINT_URL and the network"
    if isinstance(e, PermissionError):
        if "InvalidAccessKeyId" in text or "access key" in text.lower() or "SignatureDoesNotMatch" in text:
            return "the store refused the credentials (unknown access key or wrong secret); check them"
        return "access denied: the credentials in use may not read it; ask for read and list rights"
    return text or name


def list_objects(prefix: ObjectURL) -> list["StoredObject"]:
    """Every object below ``prefix`` (recursive, sorted by key), or ``DatasetError`` with one line."""
    fs = filesystem()
    if not prefix.key:
        where = prefix.bucket
    else:
        where = prefix.path + "/"
    try:
        found = fs.find(where, detail=True, withdirs=False)
    except FileNotFoundError as e:
        if "bucket" in str(e).lower():
            raise DatasetError(f"The bucket '{prefix.bucket}' does not exist (at "
                               f"{os.environ.get('AWS_ENDPOINT_URL') or 'AWS'}). Check the URL.") from None
        found = {}
    except Exception as e:  # the store's own errors (permission, network, credentials) are many kinds
        raise DatasetError(f"'{prefix}' cannot be listed: {_why(e)}.") from None
    objects = []
    for path, info in found.items():
        if info.get("type") == "directory" or path.endswith("/"):
            continue
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        objects.append(StoredObject(ObjectURL(SCHEME + path), int(info.get("size") or 0), etag))
    if not objects:
        raise DatasetError(f"There are no objects under '{prefix}'. Check the prefix: it should hold one "
                           "sub-prefix of photos per class (s3://BUCKET/PREFIX/CLASS/photo.jpg).")
    return sorted(objects, key=lambda o: o.url)


def sub_prefixes(prefix: ObjectURL) -> list[ObjectURL]:
    """The sub-prefixes directly below ``prefix`` (what a folder's sub-folders are); [] if it cannot be listed."""
    try:
        entries = filesystem().ls(prefix.path, detail=True)
    except Exception:
        return []
    return sorted(ObjectURL(SCHEME + e["name"]) for e in entries if e.get("type") == "directory")


@dataclass(frozen=True)
class StoredObject:
    """One object of a listing: where it is, its size in bytes and its ETag (changes when its bytes change)."""

    url: ObjectURL
    size: int
    etag: str

    @property
    def version(self) -> str:
        return f"{self.size}\t{self.etag}"


class _NamedBytes(io.BytesIO):
    """The bytes of one object, named after it (so an image error names the photo)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name


def read_object(url: str) -> BinaryIO:
    """The whole object at ``url`` as an in-memory binary file named after it; ``ImageError`` if unreadable."""
    url = ObjectURL(url)
    try:
        data = filesystem().cat_file(url.path, max_concurrency=1)  # one GET (more would first ask its size)
    except FileNotFoundError:
        raise ImageError(f"'{url.name}' does not exist (any more) at {url}.") from None
    except DatasetError:
        raise
    except Exception as e:
        raise ImageError(f"'{url.name}' cannot be read from the store: {_why(e)}.") from None
    return _NamedBytes(data, url.name)


def read_bytes(source) -> bytes:
    """All the bytes of a photo, a file (``OSError`` if unreadable) or an object (``ImageError``)."""
    return read_object(source).read() if is_url(source) else Path(source).read_bytes()


def open_file(source) -> BinaryIO:
    """A binary file object of a photo, for reading its header: a local file, or an object read in blocks.

    Raises ``OSError`` (local) or ``ImageError`` (object store) when it cannot be opened."""
    if not is_url(source):
        return open(source, "rb")
    url = ObjectURL(source)
    try:
        return filesystem().open(url.path, "rb", block_size=HEADER_BLOCK, cache_type="readahead")
    except FileNotFoundError:
        raise ImageError(f"'{url.name}' does not exist (any more) at {url}.") from None
    except Exception as e:
        raise ImageError(f"'{url.name}' cannot be read from the store: {_why(e)}.") from None


def stamp(source) -> Optional[str]:
    """What changes when the photo at ``source`` changes (size and mtime of a file, ETag of an object); None if
    it cannot be found."""
    try:
        if is_url(source):
            info = filesystem().info(ObjectURL(source).path)
            return f"{info.get('size')}-{str(info.get('ETag') or '').strip(chr(34))}"
        st = os.stat(source)
        return f"{st.st_size}-{st.st_mtime_ns}"
    except Exception:  # missing, unreadable, or any error of the store: "not available" to the caller
        return None
