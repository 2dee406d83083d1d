"""The CPU's instruction-set flags, as Linux's /proc/cpuinfo lists them.

The CPU-dependent choices read them: whether bfloat16 has matrix
instructions here (trainer/precision.py) and which build of the compiled
ops this CPU runs (dataspec/native_ops.py).
"""

from typing import FrozenSet


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> FrozenSet[str]:
  """The first processor's flags; empty where the file cannot be read or
  has no flags line (not Linux, not x86)."""
  try:
    with open(cpuinfo, encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.partition(":")[2].split())
  except OSError:
    pass
  return frozenset()
