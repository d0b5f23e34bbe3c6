"""IDX files, the format the MNIST family ships in.

2 zero bytes, a dtype code, ndim, ndim big-endian uint32 dims, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IdxFormatError", "parse_idx", "read_idx"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """An IDX file whose header or length is not what the format requires."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file.

    Args:
        data: the whole file.
        source: a name for error messages, usually the path.

    Returns:
        Array of the header's shape and dtype, native byte order, writable.

    Raises:
        IdxFormatError: bad magic, unknown dtype code, truncated header, or a data length
            that disagrees with the header's dims.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header (>= 4)")
    if data[:2] != b"\x00\x00":
        raise IdxFormatError(f"{source}: bad IDX magic 0x{data[:4].hex()}: must start with 0x0000")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise IdxFormatError(f"{source}: unknown IDX dtype code 0x{code:02x}; expected one of {known}")
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise IdxFormatError(
            f"{source}: IDX header declares {ndim} dims ({header_len} header bytes), file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - header_len != expected:
        raise IdxFormatError(
            f"{source}: IDX header says shape {dims} of {dtype.name} = {expected} data bytes, "
            f"but {len(data) - header_len} follow the header"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # copies: writable, native order


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by the gzip magic, not the suffix).

    Args:
        path: the file.

    Returns:
        The decoded array, e.g. uint8 (60000, 28, 28) for Fashion-MNIST training images.

    Raises:
        FileNotFoundError: no such file.
        IdxFormatError: a broken gzip stream or a malformed IDX payload, naming the file.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise IdxFormatError(f"{path}: corrupt gzip stream ({err})") from err
    return parse_idx(data, source=str(path))
