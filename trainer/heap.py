"""Keeps freed memory in the C heap: glibc's mmap/munmap per tensor is slow.

glibc's malloc hands some allocations straight to mmap and returns them with
munmap when freed. TensorFlow frees and reallocates the same tensors every
step, so each of those costs two system calls plus page faults that zero the
pages again. In the training step this hits tensors of exactly 128 KB (a
(128 rows, 256 units) float32 state of the LSTM loop): with 128 rows per
recurrence (batch 128, or batch 256 split in two) about 10,000 mmap/munmap
pairs per step took half the CPU time as system time, and training ran at
23,600 tokens/s instead of 43,700 (2-core EPYC, 2x256 char model, batch
128). Setting glibc's M_MMAP_THRESHOLD does not stop it here (the chunks
still came back through munmap); M_MMAP_MAX = 0 does: every allocation then
comes from the heap, which glibc trims when its top is free.

Generation measured no gain (its tensors are smaller or reused), so only the
trainer calls this. The heap's top is still trimmed when it is free, which
frees pages the next step faults in again: the trainer also takes its
tensors from TensorFlow's BFC allocator (dataspec/tf_allocator.py). Both
are needed: with BFC on, leaving the per-allocation mmap on made training
1.26-1.31x slower at batch 64 and 256 (bench_train.py ours_mmap, AVX2 VM,
2026-12-03), at the same peak memory.
"""

import ctypes
import ctypes.util

from absl import logging

_M_MMAP_MAX = -4  # glibc's malloc.h


def keep_freed_memory() -> bool:
  """Turns glibc's per-allocation mmap off; False where there is no glibc."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False  # not glibc (macOS, musl): nothing to tune
  ok = bool(mallopt(_M_MMAP_MAX, 0))
  logging.info("glibc malloc: per-allocation mmap %s (trainer/heap.py)",
               "off" if ok else "could not be turned off")
  return ok
