"""Decoding's compiled CPU ops: build, load, and the weight layout they read.

  python -m dataspec.decode_ops     # ~30 s; ./install.sh and the container
                                    # image run it

For textgen-generate --decode_ops=fused (dataspec.serving.LanguageModel,
decode_ops="fused"), two libraries:
  - `decode_ops.cc`, TextgenLstmLayers: a position's step through every
    LSTM layer (the products, on weights packed once, and the gate math) as
    one op (prompt and decoding), and TextgenPick: the output layer and
    the greedy or sampled choice of the next token (argmax of logits /
    temperature + noise) as one op; built for AVX2 + FMA (x86-64-v3), with
    both ops' tiles also in AVX-512, which they run where the CPU has it
    (the same bits; their `vectors` attribute picks); and
    TextgenLstmLayersBf16: TextgenLstmLayers with bfloat16 products on AMX
    (--precision=bfloat16; CPUs with AMX only: amx_runs_here());
  - `decode_noise.cc`, TextgenGumbelNoise: sampling's noise, bit for bit
    serving.gumbel_noise's; built for AVX2 without FMA (TensorFlow's own
    kernels are built without FMA too), with the same operations on 16
    lanes where the CPU has AVX-512 (its `vectors` attribute).
Both run on x86-64 CPUs with AVX2 and FMA only; elsewhere, or without the
built libraries, LanguageModel(decode_ops="fused") says why. The exported
SavedModel never contains them.
"""

import functools
import os
from typing import List, NamedTuple, Optional

from absl import logging
import tensorflow as tf

from dataspec import native_ops
from dataspec.cpuinfo import cpu_flags, has_amx_bf16

_DIR = os.path.dirname(os.path.abspath(__file__))
VARIANT = "x86-64-v3"  # the CPUs both libraries run on
# (source, variant) of each library.
LIBRARIES = ((os.path.join(_DIR, "decode_ops.cc"), VARIANT),
             (os.path.join(_DIR, "decode_noise.cc"), "x86-64-v3-nofma"))
PANEL_UNITS = 4  # units per 16-column panel (4 gates each)
GATE_PANEL_UNITS = 16  # units per gate-major panel (AVX-512 CPUs; 64 columns)


class Ops(NamedTuple):
  lstm_layers: object  # TextgenLstmLayers' Python function
  lstm_layers_bf16: object  # TextgenLstmLayersBf16's (AMX CPUs only)
  pick: object  # TextgenPick's
  gumbel_noise: object  # TextgenGumbelNoise's


INTER_OP_ENV = "TF_NUM_INTEROP_THREADS"


def use_one_inter_op_thread() -> bool:
  """Asks TensorFlow for one inter-op thread (the thread that runs a
  graph's ops one after another), unless the environment already sets
  TF_NUM_INTEROP_THREADS. Call it before any op runs (TensorFlow reads the
  variable when it starts, at the first op). Returns whether one thread is
  asked for.

  Why: TextgenLstmLayers runs its row blocks on the thread that calls it,
  an inter-op thread, and on a helper from the intra-op pool. With two
  inter-op threads (TensorFlow's default on 2 cores) the loop's ops moved
  between them, and in 4-7% of the op's calls at batch 256 (16-25% in a
  loop of the op alone) the helper was woken on the caller's own CPU and
  the call ran on one core, twice as long. With one: 3-9 such calls of
  2,695 instead of 88-185 (2-core AMD EPYC VM, 2026-12-04). bench_generate.py,
  six runs alternating, nine rounds each: decode 1.05x / 1.24x / 1.06x
  and prefill 1.10x / 1.18x / 1.13x at batch 1 / 64 / 256. Only for
  --decode_ops=fused: the TensorFlow path runs independent ops side by
  side and decoded 0.83-0.85x as fast at batch 256 with one thread."""
  os.environ.setdefault(INTER_OP_ENV, "1")
  return os.environ[INTER_OP_ENV].strip() == "1"


def runs_here() -> bool:
  """Whether this CPU runs the libraries (x86-64 with AVX2 and FMA)."""
  return native_ops.is_x86_64() and native_ops.cpu_runs(VARIANT)


def build(*, force: bool = False) -> List[str]:
  """Compiles the libraries not built yet (dataspec.native_ops.build);
  returns their paths (none off x86-64)."""
  if not native_ops.is_x86_64():
    return []
  return [path for source, variant in LIBRARIES
          for path in native_ops.build(source, [variant], _DIR, force=force)]


@functools.cache
def load() -> Optional[Ops]:
  """The ops if this CPU runs the built libraries, else None after one
  warning saying why."""
  if not runs_here():
    logging.warning("The fused decode ops need an x86-64 CPU with AVX2 and FMA")
    return None
  modules = []
  for source, variant in LIBRARIES:
    path = native_ops.library_path(source, variant, _DIR)
    if not os.path.exists(path):
      logging.warning(
          "The fused decode ops are not built for TensorFlow %s (dataspec/decode_ops.py): "
          "build them with `python -m dataspec.decode_ops` (needs g++).", tf.__version__)
      return None
    module = native_ops.load_library(path, "decode_ops='fused' cannot run")
    if module is None:
      return None
    modules.append(module)
    logging.info("Fused decode ops: %s", path)
  return Ops(lstm_layers=modules[0].textgen_lstm_layers,
             lstm_layers_bf16=modules[0].textgen_lstm_layers_bf16, pick=modules[0].textgen_pick,
             gumbel_noise=modules[1].textgen_gumbel_noise)


AMX_DEPTH = 32  # input columns per AMX tile: pack_kernel_bf16 pads to a multiple


def amx_runs_here() -> bool:
  """Whether this CPU has what TextgenLstmLayersBf16 runs on (AMX-BF16 and
  AVX512-BF16: Intel Xeon Sapphire Rapids or later). The op also needs
  Linux to give the process AMX's tile state (5.16 or later) and says so
  when it does not."""
  return runs_here() and has_amx_bf16()


def panel_units(units: int) -> int:
  """The panels TextgenLstmLayers reads fastest on this CPU for a layer of
  `units` units: GATE_PANEL_UNITS where it runs its AVX-512 tiles and
  units is a multiple of 16 (one 512-bit register per gate of 16 units:
  the gate math without shuffles; decoding 1.11x faster at batch 256 on
  the 2-core Xeon VM),
  else PANEL_UNITS. Both give the same bits."""
  if units % GATE_PANEL_UNITS == 0 and "avx512f" in cpu_flags():
    return GATE_PANEL_UNITS
  return PANEL_UNITS


def pack_kernel(kernel: Optional[tf.Tensor], recurrent_kernel: tf.Tensor, *,
                panel_units: int = PANEL_UNITS) -> tf.Tensor:
  """[kernel; recurrent_kernel] (in + units, 4 units; Keras's gate order i,
  f, g, o) as the op reads it: (units / n, in + units, 4 n) for panels of
  n = panel_units units (4, or 16 on CPUs with AVX-512: panel_units()),
  panel p holding units n p..n p + n - 1's four gates (i of the n units,
  then f, g, o) for every input row. kernel None: the layer's input half
  is not a product (an input table's rows come in the op's addend
  instead)."""
  if panel_units not in (PANEL_UNITS, GATE_PANEL_UNITS):
    raise ValueError(f"panel_units must be {PANEL_UNITS} or {GATE_PANEL_UNITS}, "
                     f"got {panel_units}")
  stacked = recurrent_kernel if kernel is None else tf.concat([kernel, recurrent_kernel], 0)
  depth, units = stacked.shape[0], stacked.shape[1] // 4
  if units <= 0 or units % panel_units:
    raise ValueError(f"units must be a positive multiple of {panel_units}, got {units}")
  by_gate = tf.reshape(stacked, [depth, 4, units // panel_units, panel_units])
  return tf.reshape(tf.transpose(by_gate, [2, 0, 1, 3]),
                    [units // panel_units, depth, 4 * panel_units])


def pack_kernel_bf16(kernel: Optional[tf.Tensor], recurrent_kernel: tf.Tensor) -> tf.Tensor:
  """[kernel; recurrent_kernel] (in + units, 4 units; Keras's gate order)
  as TextgenLstmLayersBf16 reads it: rounded to bfloat16 (nearest even),
  the input rows padded with zeros to depth = a multiple of AMX_DEPTH, as
  (units / 16, 4, depth / 2, 32): panel p, gate g, row k holds input rows
  2 k and 2 k + 1 of the columns of units 16 p..16 p + 15 of gate g,
  interleaved (column j's two values at 2 j, 2 j + 1: AMX's pairs).
  kernel None: as in pack_kernel."""
  stacked = recurrent_kernel if kernel is None else tf.concat([kernel, recurrent_kernel], 0)
  depth, units = stacked.shape[0], stacked.shape[1] // 4
  if units <= 0 or units % GATE_PANEL_UNITS:
    raise ValueError(f"units must be a positive multiple of {GATE_PANEL_UNITS}, got {units}")
  padded = -(-depth // AMX_DEPTH) * AMX_DEPTH
  stacked = tf.pad(tf.cast(stacked, tf.bfloat16), [[0, padded - depth], [0, 0]])
  pairs = tf.reshape(stacked, [padded // 2, 2, 4, units // GATE_PANEL_UNITS, GATE_PANEL_UNITS])
  return tf.reshape(tf.transpose(pairs, [3, 2, 0, 4, 1]),
                    [units // GATE_PANEL_UNITS, 4, padded // 2, 2 * GATE_PANEL_UNITS])


if __name__ == "__main__":
  native_ops.run_build(build, __doc__)
