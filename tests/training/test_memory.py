"""The trainer's fixed mmap threshold: large blocks keep their own mapping after a large free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnlab.training import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")

# In a fresh interpreter: free a 16 MiB block (glibc then raises its mmap threshold to 16 MiB unless
# it is fixed), malloc 1 MiB, and print whether that block got its own mapping (mallinfo2's hblks).
PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("memory", sys.argv[2])  # the module alone: no torch import
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert memory.fix_mmap_threshold()
libc.free(libc.malloc(16 << 20))
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _own_mappings(mode: str) -> int:
    command = [sys.executable, "-c", PROBE, mode, memory.__file__]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def test_a_fixed_threshold_keeps_large_blocks_in_their_own_mapping():
    assert _own_mappings("default") == 0  # glibc's dynamic threshold: the 1 MiB block comes from the heap
    assert _own_mappings("fixed") == 1


def test_the_trainer_fixes_the_threshold_only_when_asked(tmp_path, monkeypatch, tiny_translation_config):
    from attnlab.training import RunConfig, Trainer

    calls = []
    monkeypatch.setattr("attnlab.training.trainer.fix_mmap_threshold", lambda threshold: calls.append(threshold))
    Trainer(RunConfig.from_dict(tiny_translation_config(tmp_path / "a", max_steps=1))).setup()
    assert calls == []
    config = tiny_translation_config(tmp_path / "b", max_steps=1, malloc_mmap_threshold=131072)
    Trainer(RunConfig.from_dict(config)).setup()
    assert calls == [131072]
