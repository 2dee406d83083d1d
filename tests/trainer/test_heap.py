"""trainer.heap: after keep_freed_memory, glibc serves big blocks from the heap."""

import sys

import pytest

from testutil import REPO, run_python

_PROBE = r"""
import ctypes, sys
sys.path.insert(0, {root!r})
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):  # glibc's struct mallinfo2
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
      "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
if {tune}:
  from trainer import heap
  assert heap.keep_freed_memory()
before = libc.mallinfo2().hblks
block = libc.malloc(135168 - 16)  # the 128 KB tensors of the LSTM step
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("tune,mmapped", [(False, "1"), (True, "0")])
def test_big_blocks_come_from_the_heap(tune, mmapped):
  """Without the tuning the block is mmapped (the test's own control)."""
  assert run_python(_PROBE.format(root=REPO, tune=tune)).strip() == mmapped
