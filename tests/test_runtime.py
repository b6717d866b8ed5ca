"""zoo.runtime: freed memory is reused instead of being faulted in again on every allocation."""

import ctypes.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, writes and frees 80 MiB five times through malloc itself, as XLA:CPU does with a
# step's temporary buffer, on the main thread or another one, and prints the minor page faults
# that cost.
ALLOCATE = """
import ctypes, ctypes.util, resource, sys, threading
from zoo.runtime import reuse_freed_memory
if sys.argv[1] != "plain":
    assert reuse_freed_memory(single_arena=sys.argv[1] == "single-arena")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 80 << 20

def rounds():
    for _ in range(5):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if sys.argv[2] == "thread":
    worker = threading.Thread(target=rounds)
    worker.start()
    worker.join()
else:
    rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


def page_faults(mode: str, thread: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATE, mode, thread],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
@pytest.mark.parametrize(
    "mode, thread, reused",
    [
        ("reuse", "main", True),
        ("reuse", "thread", False),  # a thread's arena maps blocks over 64 MiB whatever we set
        ("single-arena", "main", True),
        ("single-arena", "thread", True),
    ],
)
def test_reuse_freed_memory_stops_repeated_page_faults(mode, thread, reused):
    pages = (80 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert page_faults("plain", thread) >= 4 * pages  # each round maps and faults the block in
    faults = page_faults(mode, thread)
    if reused:
        assert faults <= 1.5 * pages  # only the first round faults its pages in
    else:
        assert faults >= 4 * pages


def test_reuse_freed_memory_says_whether_it_applied():
    from zoo.runtime import reuse_freed_memory

    has_mallopt = hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallopt")
    assert reuse_freed_memory() is has_mallopt
