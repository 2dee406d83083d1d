"""TensorFlow's CPU tensors from its BFC allocator, which keeps its memory.

By default TensorFlow allocates each CPU tensor with the C library's malloc,
and glibc gives big blocks back to the kernel when they are freed (munmap,
or trimming the heap's top; trainer/heap.py turns off the first). A job
that frees and reallocates the same big tensors every step then gets fresh
pages each time, which the kernel faults in and zeroes again: one op, the
LSTM's gate math over 16,384 x 1,024 floats, took 66 ms with 16,385 page
faults and 24 ms with none (2-core AMD EPYC VM, 2026-12-02). TensorFlow's
best-fit-with-coalescing (BFC) allocator, the one it uses on GPUs, serves
CPU tensors too when TF_CPU_ALLOCATOR_USE_BFC is set: it keeps what it took
from the C heap and hands the same memory to the next step. Measured with
it on the same VM, 2 or 3 alternating rounds each: training 1.07x tokens/s
at batch 64 and 256 with 11% and 7% less peak anonymous memory
(bench_train.py's ours against ours_malloc; plain Keras's `model.fit`,
whose per-step tensors are small, did not change); the generation job's
prefill of 256 prompts 1.20x, its decoding 1.00x; the evaluation job 1.04x
and 1.18x (two rounds, a 2x256 model).

TensorFlow reads the variable when it creates its CPU allocator, at the
first op, so the jobs call `use_bfc_allocator` before they run any. The
allocator grows as the job needs, up to TF_CPU_BFC_MEM_LIMIT_IN_MB (64 GB
unless set), and never hands memory back: a job's peak is what it keeps.
"""

import os
from typing import Optional

from absl import logging

BFC_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def use_bfc_allocator() -> bool:
  """Asks TensorFlow for its BFC allocator on the CPU, unless the environment
  already says (TF_CPU_ALLOCATOR_USE_BFC=false keeps TensorFlow's default).
  Call it before any TensorFlow op runs. Returns whether BFC is asked for."""
  os.environ.setdefault(BFC_ENV, "true")
  return os.environ[BFC_ENV].strip().lower() in ("true", "1")


def peak_bytes() -> Optional[int]:
  """The most memory TensorFlow's CPU tensors held at once so far, or None
  when the CPU allocator keeps no statistics (it is not the BFC allocator)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (use_bfc_allocator must not import it)
  try:
    return tf.config.experimental.get_memory_info("CPU:0")["peak"]
  except ValueError:
    return None


def log_peak():
  """Logs `peak_bytes` where there is one: what a job's tensors needed (a
  container's memory limit also holds TensorFlow itself, ~550 MB)."""
  peak = peak_bytes()
  if peak is not None:
    logging.info("Peak memory of TensorFlow's CPU tensors: %.0f MB (BFC allocator)",
                 peak / 2**20)
