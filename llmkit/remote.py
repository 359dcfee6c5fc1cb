"""Inputs in object stores (s3://, gs://, hdfs://, abfs://) read through pyarrow's filesystems,
the same ones Ray Data reads with, so every reader streams them like local files.

`RemotePath` offers the few `pathlib.Path` methods the readers use, so `readers.py` has one code
path for local and remote inputs (`readers.as_input` decides which an input is). Credentials and endpoints come from the store's usual
environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, …); nothing is
printed from them.
"""

from __future__ import annotations

import fnmatch
import io
from pathlib import Path
from types import SimpleNamespace

from llmkit.errors import DataError, first_line

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def is_uri(value) -> bool:
    scheme, sep, _ = str(value).partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


class RemotePath:
    """A file or folder in an object store, behind the `Path` methods the readers call."""

    def __init__(self, uri: str, fs=None, path: str | None = None, info=None):
        if fs is None:
            import pyarrow.fs as pafs

            try:
                fs, path = pafs.FileSystem.from_uri(uri)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot open {uri}: {_one_line(exc)}", hint_for(uri)) from exc
        self.uri, self.fs, self.path = uri.rstrip("/"), fs, path.rstrip("/")
        self._listed = info  # the FileInfo a folder listing gave: stat() without another request

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __lt__(self, other: RemotePath) -> bool:  # sorted() of a folder's files
        return self.uri < other.uri

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.uri}/{name}", self.fs, f"{self.path}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def _info(self):
        if self._listed is not None:
            return self._listed
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise DataError(f"cannot read {self.uri}: {_one_line(exc)}", hint_for(self.uri)) from exc

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def stat(self):
        info = self._info()
        return SimpleNamespace(st_size=info.size or 0, st_mtime_ns=info.mtime_ns or 0)

    def resolve(self) -> RemotePath:
        return self

    def relative_to(self, other: RemotePath) -> str:
        return self.path[len(other.path) + 1 :]

    def rglob(self, pattern: str) -> list[RemotePath]:
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        except OSError as exc:
            raise DataError(f"cannot list {self.uri}: {_one_line(exc)}", hint_for(self.uri)) from exc
        return [
            RemotePath(f"{self.uri}/{i.path[len(self.path) + 1 :]}", self.fs, i.path, i)
            for i in infos
            if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern)
        ]

    def open(self, mode: str = "rb") -> io.BufferedReader:
        """A buffered, seekable binary file: lines stream, Parquet footers take ranged reads."""
        if mode != "rb":
            raise ValueError(f"{self.uri} is an input: it opens for reading only")
        try:
            return io.BufferedReader(_Raw(self.fs.open_input_file(self.path)), buffer_size=1 << 20)
        except OSError as exc:
            raise DataError(f"cannot read {self.uri}: {_one_line(exc)}", hint_for(self.uri)) from exc

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()


class _Raw(io.RawIOBase):
    """pyarrow's NativeFile as a raw stream, so io.BufferedReader gives it readline and iteration."""

    def __init__(self, native):
        self.native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.native.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.native.seek(offset, whence)

    def tell(self) -> int:
        return self.native.tell()

    def close(self) -> None:
        self.native.close()
        super().close()


def _one_line(exc: Exception) -> str:
    return first_line(exc, 200)


def hint_for(uri) -> str:
    """What to check when an object-store input cannot be read (a URI or a RemotePath)."""
    return (
        "check the bucket and key, and the store's credentials in the environment "
        "(e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for S3-compatible stores)"
        if str(uri).lower().startswith("s3://")
        else "check the path and the store's credentials in the environment"
    )
