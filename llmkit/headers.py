"""The headers of weight files, read without the weights: GGUF metadata and tensor list, and the
safetensors JSON header. Every part of llmkit that reads these goes through here.

gguf.GGUFReader builds numpy objects for every field and token string (seconds for a 262k
vocabulary) and maps the tensor data; this reader walks the header of a memory-mapped file with
`struct.unpack_from` (milliseconds), skips long string arrays unless asked for them, and checks
that the tensor data the header announces is really in the file, so a truncated download is
named as such instead of failing later inside numpy or transformers.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import SourceError

_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
LONG_ARRAY = 64  # string arrays longer than this (token texts, merges) are skipped unless kept
_REFETCH = "download or copy it again: a download or copy that stopped early leaves a cut-off file"


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    ggml_type: int
    offset: int  # from the start of the tensor data section

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, object]
    tensors: list[GGUFTensor]
    data_offset: int  # where the tensor data section starts
    skipped: dict[str, int] = field(default_factory=dict)  # long string arrays not read: key → length

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "unknown")


class _Truncated(Exception):
    """The header runs past the end of the file, or holds a length no real file has."""


def read_gguf(path: str | Path, *, keep: Collection[str] | bool = ()) -> GGUFHeader:
    """Metadata (key → value) and tensor list of a GGUF file.

    Numeric arrays are read whole; string arrays longer than LONG_ARRAY are listed in `skipped`
    instead, unless their key is in `keep` (or `keep=True`). Raises SourceError for a file that
    is not GGUF (bad magic), is truncated, or whose header is corrupt.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 4:
                raise _Truncated(f"{size} bytes")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                if buf[:4] != b"GGUF":
                    raise SourceError(f"{path} is not a GGUF file (bad magic)", "pass a .gguf model file")
                header = _parse(path, buf, keep)
    except _Truncated as exc:
        raise SourceError(f"{path} is truncated or not a GGUF file ({exc})", _REFETCH) from None
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise SourceError(
            f"{path} is truncated or not a GGUF file (corrupt header: {exc})", _REFETCH
        ) from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_data(header, size)
    return header


def _parse(path: Path, buf: mmap.mmap, keep: Collection[str] | bool) -> GGUFHeader:
    end = len(buf)
    pos = 4

    def unpack(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > end:
            raise _Truncated(f"the header ends past byte {end:,}, the end of the file")
        out = struct.unpack_from(fmt, buf, pos)
        pos += n
        return out

    def string(decode: bool = True) -> str | None:
        nonlocal pos
        (n,) = unpack("<Q")
        if pos + n > end:
            raise _Truncated(
                f"a {n:,}-byte string at byte {pos:,} runs past the end of the file ({end:,} bytes)"
            )
        pos += n
        return bytes(buf[pos - n : pos]).decode("utf-8", "replace") if decode else None

    def value(vtype: int, key: str):
        if vtype == _STRING:
            return string()
        if vtype == _ARRAY:
            sub, n = unpack("<IQ")
            if sub in _SCALAR:
                width = struct.calcsize(_SCALAR[sub])
                if pos + n * width > end:
                    raise _Truncated(f"the array {key} runs past the end of the file ({end:,} bytes)")
                return list(unpack(f"<{n}{_SCALAR[sub][1]}")) if n else []
            if sub == _STRING and n > LONG_ARRAY and not (keep is True or key in keep):
                for _ in range(n):
                    string(decode=False)
                skipped[key] = n
                return None
            return [value(sub, key) for _ in range(n)]
        if vtype not in _SCALAR:
            raise ValueError(f"unknown value type {vtype} for {key}")
        return unpack(_SCALAR[vtype])[0]

    version, n_tensors, n_kv = unpack("<IQQ")
    if version not in (2, 3) or n_kv > 1 << 20 or n_tensors > 1 << 24:
        raise ValueError(f"version {version}, {n_kv} keys, {n_tensors} tensors")
    metadata: dict[str, object] = {}
    skipped: dict[str, int] = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = unpack("<I")
        v = value(vtype, key)
        if key not in skipped:
            metadata[key] = v
    tensors = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = unpack("<I")
        if n_dims > 8:
            raise ValueError(f"tensor {name} has {n_dims} dimensions")
        dims = unpack(f"<{n_dims}Q")
        ggml_type, offset = unpack("<IQ")
        tensors.append(GGUFTensor(name, tuple(dims), ggml_type, offset))
    align = int(metadata.get("general.alignment") or 32)
    data_offset = -(-pos // align) * align
    return GGUFHeader(path, version, metadata, tensors, data_offset, skipped)


def _check_data(header: GGUFHeader, size: int) -> None:
    """The tensor data the header announces must be in the file (a cut-off download is not)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    needed = header.data_offset
    for t in header.tensors:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
        except (ValueError, KeyError):  # a type this gguf-py does not know: its size is unknown
            continue
        needed = max(needed, header.data_offset + t.offset + t.n_elements // block * type_size)
    if needed > size:
        raise SourceError(
            f"{header.path} is truncated or not a GGUF file (its tensors need {needed:,} bytes, "
            f"the file has {size:,})",
            _REFETCH,
        )


# ----------------------------------------------------------------------------- safetensors


@dataclass
class SafetensorsHeader:
    path: Path
    tensors: dict[str, dict]  # name → {"dtype", "shape", "data_offsets"} (offsets from data_offset)
    metadata: dict[str, str]  # the optional "__metadata__" entry
    data_offset: int  # 8 + the JSON header's length: where tensor data starts

    @property
    def data_size(self) -> int:
        return max((e["data_offsets"][1] for e in self.tensors.values()), default=0)


def read_safetensors(path: str | Path) -> SafetensorsHeader:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), checked
    against the file's size. Raises SourceError for a truncated or corrupt file."""
    path = Path(path)
    hint = "download or save the model again"
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or 8 + n > size:
                raise SourceError(
                    f"{path} is truncated or not a safetensors file (header of {n:,} bytes, file of {size:,})",
                    hint,
                )
            header = json.loads(fh.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path} is not a safetensors file (corrupt header: {exc})", hint) from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(header, dict):
        raise SourceError(f"{path} is not a safetensors file (its header is not a JSON object)", hint)
    metadata = header.pop("__metadata__", None) or {}
    result = SafetensorsHeader(path, header, metadata, 8 + n)
    try:
        needed = result.data_offset + result.data_size
    except (KeyError, TypeError, IndexError):
        raise SourceError(
            f"{path} is not a safetensors file (a tensor entry has no data_offsets)", hint
        ) from None
    if needed > size:
        raise SourceError(
            f"{path} is truncated (its tensors need {needed:,} bytes, the file has {size:,})", hint
        )
    return result
