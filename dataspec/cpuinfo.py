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


# What TextgenLstmLayersBf16 (dataspec/decode_ops.cc) runs on: AMX-BF16
# with AVX512-BF16 (Intel Xeon Sapphire Rapids or later).
AMX_BF16_FLAGS = frozenset({"amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512vl"})


def has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has AMX_BF16_FLAGS."""
  return AMX_BF16_FLAGS <= cpu_flags(cpuinfo)
