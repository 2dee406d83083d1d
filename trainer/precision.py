"""--mixed_precision: which Keras dtype policy a run computes in.

GPUs get float16 (cuDNN's LSTM kernel, Tensor Cores; Keras's loss scaling
keeps small gradients from underflowing). CPUs get bfloat16: float16 has no
arithmetic on x86 CPUs (it is converted back and forth, slower than
float32), while bfloat16 matrix products run on AMX and AVX512_BF16 units
(the fused CPU LSTM casts its weights to the compute dtype, so its GEMMs run
in bfloat16, its state too), and bfloat16 has float32's exponent range, so
no loss scaling. The variables, the output layer and the loss stay float32
either way, and the export is float32.
"""

from typing import Optional

from absl import logging

from dataspec.cpuinfo import cpu_flags

# Linux /proc/cpuinfo flags of x86 bfloat16 matrix arithmetic.
_BFLOAT16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has bfloat16 matrix instructions (False where
  /proc/cpuinfo cannot be read)."""
  return not cpu_flags(cpuinfo).isdisjoint(_BFLOAT16_CPU_FLAGS)


def policy_name(*, mixed_precision: bool, dtype: str, gpus: int) -> str:
  """The Keras dtype policy: "float32", "mixed_float16" or "mixed_bfloat16".

  Args:
    mixed_precision: --mixed_precision.
    dtype: --mixed_precision_dtype: "auto" (float16 with GPUs, bfloat16
      without), "float16" or "bfloat16".
    gpus: GPUs this worker trains on.
  """
  if not mixed_precision:
    return "float32"
  if dtype == "auto":
    dtype = "float16" if gpus else "bfloat16"
  if dtype not in ("float16", "bfloat16"):
    raise ValueError(f"Unrecognized --mixed_precision_dtype: {dtype!r}")
  return f"mixed_{dtype}"


def warn_if_slow(policy: str, *, gpus: int, cpu_bfloat16: Optional[bool] = None):
  """Logs a warning where the policy is slower than float32 here.
  cpu_bfloat16: whether the CPU has bfloat16 instructions; None = read
  /proc/cpuinfo (only for mixed_bfloat16 without GPUs)."""
  if gpus or policy == "float32":
    return
  if policy == "mixed_float16":
    logging.warning("--mixed_precision_dtype=float16 on CPU is slower than float32 "
                    "(x86 CPUs have no float16 arithmetic); bfloat16 is the CPU's")
  elif not (cpu_has_bfloat16() if cpu_bfloat16 is None else cpu_bfloat16):
    logging.warning("This CPU has no bfloat16 instructions (%s): "
                    "--mixed_precision will be slower than float32",
                    ", ".join(_BFLOAT16_CPU_FLAGS))
