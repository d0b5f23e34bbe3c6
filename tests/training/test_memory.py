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


# ----------------------------------------------------------------------------- the allocator


def test_system_and_a_second_start_never_relaunch(monkeypatch):
    monkeypatch.setattr(memory, "find_allocator", lambda name: "libjemalloc.so.2")
    monkeypatch.setattr(memory, "loaded_allocator", lambda: None)
    assert memory.relaunch_environment("system", {}) is None
    assert memory.relaunch_environment("auto", {memory.RELAUNCHED: "1"}) is None
    monkeypatch.setattr(memory, "loaded_allocator", lambda: "tcmalloc")
    assert memory.relaunch_environment("jemalloc", {}) is None  # already under another allocator


def test_auto_preloads_tcmalloc_before_the_users_preload(monkeypatch):
    found = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
    monkeypatch.setattr(memory, "find_allocator", found.get)
    monkeypatch.setattr(memory, "loaded_allocator", lambda: None)
    environment = memory.relaunch_environment("auto", {"LD_PRELOAD": "libmine.so", "HOME": "/h"})
    assert environment == {"LD_PRELOAD": "libtcmalloc_minimal.so.4 libmine.so", "HOME": "/h", memory.RELAUNCHED: "1"}


def test_a_missing_allocator_is_named_unless_auto(monkeypatch):
    from attnlab.config import ConfigError

    monkeypatch.setattr(memory, "find_allocator", lambda name: None)
    monkeypatch.setattr(memory, "loaded_allocator", lambda: None)
    assert memory.relaunch_environment("auto", {}) is None
    with pytest.raises(ConfigError, match=r"training.allocator \('jemalloc'\).*apt install libjemalloc2"):
        memory.relaunch_environment("jemalloc", {})


def test_the_loaded_allocator_is_read_from_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert memory.loaded_allocator(maps) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert memory.loaded_allocator(maps) is None
    assert memory.loaded_allocator(tmp_path / "missing") is None


def test_attnlab_train_starts_again_under_tcmalloc_where_installed(tmp_path, tiny_translation_config):
    # The console command (sys.argv, not main(argv)) relaunches itself; the start line names the malloc.
    import os

    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_translation_config(tmp_path / "run", max_steps=2, final_split=None)))
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", memory.RELAUNCHED)}
    command = [sys.executable, "-m", "attnlab.cli.main", "train", str(config), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = "tcmalloc" if memory.find_allocator("tcmalloc") else "system"
    assert f"malloc {expected});" in done.stdout
