"""IDX files: gzip or raw, every dtype code, and corrupt files named in the error."""

import gzip
import struct

import numpy as np
import pytest

from attnlab.data.idx import IdxFormatError, parse_idx, read_idx


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_gzip_and_raw(tmp_path, compress, encode_idx):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = encode_idx(array)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # writable


def test_parse_idx_decodes_big_endian_int32(encode_idx):
    array = np.array([1, -2, 70000], dtype=np.int32)
    np.testing.assert_array_equal(parse_idx(encode_idx(array, code=0x0C)), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic 0x01000801"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "declares 3 dims"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"\x00" * 5, "6 data bytes, but 5"),
    ],
)
def test_corrupt_idx_raises_clear_error(tmp_path, data, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(IdxFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_names_the_file(tmp_path, encode_idx):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros((4, 4), np.uint8)))[:-12])
    with pytest.raises(IdxFormatError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)
