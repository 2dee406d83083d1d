"""--mixed_precision's policy by device, and the CPU's bfloat16 check."""

import logging

import pytest

from trainer import precision


def test_policy_by_device_and_flag():
  name = precision.policy_name
  assert name(mixed_precision=False, dtype="bfloat16", gpus=0) == "float32"
  assert name(mixed_precision=False, dtype="auto", gpus=4) == "float32"
  # auto: float16 on GPUs (cuDNN, loss scaling), bfloat16 on CPUs.
  assert name(mixed_precision=True, dtype="auto", gpus=1) == "mixed_float16"
  assert name(mixed_precision=True, dtype="auto", gpus=8) == "mixed_float16"
  assert name(mixed_precision=True, dtype="auto", gpus=0) == "mixed_bfloat16"
  for gpus in (0, 2):
    assert name(mixed_precision=True, dtype="float16", gpus=gpus) == "mixed_float16"
    assert name(mixed_precision=True, dtype="bfloat16", gpus=gpus) == "mixed_bfloat16"
  with pytest.raises(ValueError, match="--mixed_precision_dtype"):
    name(mixed_precision=True, dtype="float8", gpus=0)


def test_cpu_bfloat16_flags(tmp_path):
  def cpuinfo(flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 {flags}\n\n")
    return str(path)

  assert precision.cpu_has_bfloat16(cpuinfo("avx2 avx512f avx512_bf16"))
  assert precision.cpu_has_bfloat16(cpuinfo("avx512f amx_tile amx_bf16"))
  assert not precision.cpu_has_bfloat16(cpuinfo("avx2 avx512f avx512_vnni"))
  assert not precision.cpu_has_bfloat16(cpuinfo("avx512_bf16x"))  # whole flags only
  assert not precision.cpu_has_bfloat16(str(tmp_path / "missing"))


def test_warns_where_16_bits_are_slower_than_float32(caplog, monkeypatch):
  def warnings(policy, **kw):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      precision.warn_if_slow(policy, **kw)
    return " ".join(r.getMessage() for r in caplog.records)

  assert "float16 on CPU is slower" in warnings("mixed_float16", gpus=0, cpu_bfloat16=True)
  assert "no bfloat16 instructions" in warnings("mixed_bfloat16", gpus=0, cpu_bfloat16=False)
  assert not warnings("mixed_bfloat16", gpus=0, cpu_bfloat16=True)
  assert not warnings("mixed_float16", gpus=1, cpu_bfloat16=False)
  assert not warnings("float32", gpus=0, cpu_bfloat16=False)
  # Without the answer given, /proc/cpuinfo is read, and only for bfloat16
  # on a CPU.
  reads = []
  monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: reads.append(1) or False)
  assert "no bfloat16 instructions" in warnings("mixed_bfloat16", gpus=0)
  assert not warnings("float32", gpus=0) and not warnings("mixed_float16", gpus=2)
  assert len(reads) == 1
