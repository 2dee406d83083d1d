"""The trained model as a TensorFlow module that takes and returns text.

`LanguageModel(spec, weights, tokenizer_spec, vocab)` holds the export's
weights and a GraphTokenizer. The trainer saves it as `export/saved_model/`
(a SavedModel that loads with only TensorFlow installed), `textgen-generate`
builds it from `weights.npz` and decodes with it, and `textgen-eval` loads the
SavedModel and scores with it: one implementation of tokenizing, decoding
and scoring, whoever runs it.

Signatures (inputs -> outputs, all batched on the first axis):
  generate, also serving_default:
      prompts (string), max_new_tokens, temperature, top_k, top_p, greedy,
      seed (scalars), stop (string, any number; "<eos>" names the end token)
      -> text, num_tokens, finish_reason ("length" or "stop"), token_ids,
         prompt_tokens, unknown_prompt_tokens
  score:
      texts (string)
      -> nll (summed, nats), tokens, loss (nats per token), bytes (UTF-8),
         bits_per_byte, unknown_tokens

Functions (attributes of the loaded object):
  tokenize(texts) -> ragged ids;  detokenize(ragged ids) -> texts
  generate_samples(prompts, prompt_index, sample_index, <generate settings>)
      what `generate` runs with prompt_index = 0..batch-1, sample_index = 0
  score_tokens(prev_ids, token_ids, lengths, h, c): one chunk of a stream,
      the LSTM state carried in and out (textgen-eval streams documents)
  info() -> JSON: the model spec, tokenizer, start id

Sampling: temperature, then top-k, then top-p (nucleus), then the Gumbel-max
trick with noise hashed from (row seed, position, token id); the
row seed is a hash of (seed, prompt index, sample index). A sample therefore
depends only on its seed, prompt, sample index and position: not on the batch
size, the batch it is in, or the shard. Scoring a text scores every token
given the ones before it, the first one after the tokenizer's start id (a
line end) when it has one, else the first token is context only.
"""

import functools
import json
import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from dataspec import decode_ops as decode_ops_lib
from dataspec import export as export_lib
from dataspec import graph_tokenizer
from dataspec import tokenizer as tokenizer_lib

SAVED_MODEL_DIR = "saved_model"
PRECISIONS = ("float32", "bfloat16")
# How a step's LSTM layers run: TensorFlow's own ops (what the SavedModel
# holds), or dataspec/decode_ops.cc's compiled ops (CPU, float32).
DECODE_OPS = ("tensorflow", "fused")
_NO_ROWS = np.zeros([0], np.int32)  # the layer ops' addend_rows: none picked
# The layer ops' x where a layer has no input columns, TextgenPick's
# noise when greedy: constants, where a tf.zeros([batch, 0]) was 4 ops a step.
_NO_COLUMNS = np.zeros([0, 0], np.float32)
SCORE_CHUNK = 256  # tokens per step of the score signature's loop
PREFILL_CHUNK = 32  # prompt tokens per step of generation's prefill loop
NOISE_BLOCK = 32  # decode positions whose sampling noise is hashed at once
_NOISE_BLOCK_VALUES = 1 << 18  # at most this many noise values at once (1 MB)
_NOISE_LANES = 16  # see gumbel_noise
# The four decoding loops (decoding_mode()).
_GREEDY, _SAMPLED, _FILTERED, _STOP_STRINGS = range(4)
_LN2 = math.log(2.0)


def _u32(value):
  return tf.constant(value, tf.uint32)


def _mix32(x):
  """murmur3's 32-bit finalizer (uint32 tensors, arithmetic modulo 2^32)."""
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16))) * _u32(0x85EBCA6B)
  x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(13))) * _u32(0xC2B2AE35)
  return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, _u32(16)))


def _noise_lanes(vocab_size):
  """The vocab rounded up to a multiple of _NOISE_LANES (see gumbel_noise)."""
  return -(-vocab_size // _NOISE_LANES) * _NOISE_LANES


def uniform_from_bits(x):
  """uint32 hash values -> float32 uniforms strictly inside (0, 1): the top 23
  bits k as (k + 0.5) / 2^23, which float32 holds exactly. (With 24 bits,
  k + 0.5 rounds to even above 2^23 and the top value became 1.0, whose
  noise is infinite: once in 2^24 draws a token was picked whatever its
  probability, about every 500 steps with a 32k vocabulary.)"""
  return (tf.cast(tf.bitwise.right_shift(x, _u32(9)), tf.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel_noise(row_seeds, positions, vocab_size):
  """(positions, batch, vocab) float32 Gumbel(0, 1) noise, a pure function of
  each row's seed, the position and the token id (a murmur3-mixed hash).

  Bit for bit, whatever the batch or the number of positions: TensorFlow's
  log runs SIMD lanes over a tensor's elements and a scalar loop over the
  last few (elements past the last whole lane group), and the two round
  differently in the last bit. Each row is therefore hashed over the vocab
  rounded up to a multiple of 16 lanes (AVX-512's float32 width), so every
  element takes the SIMD path, and cut to the vocab after. (Unpadded, with
  the 68 ids of a char model, 306 of 88,400 values of rows taken alone
  differed from the same rows inside a batch of 299.)

  Args:
    row_seeds: (batch,) int64, 31-bit (row_seeds()).
    positions: (positions,) int32, decode positions.
    vocab_size: Python int.
  """
  rows = tf.cast(row_seeds, tf.uint32)[None, :, None] * _u32(0x9E3779B1)  # (1, batch, 1)
  pos = tf.cast(positions, tf.uint32)[:, None, None] * _u32(0x85EBCA77)  # (positions, 1, 1)
  salts = tf.constant(np.arange(_noise_lanes(vocab_size), dtype=np.uint32)
                      * np.uint32(0xC2B2AE3D))  # (lanes,), modulo 2^32
  x = _mix32(_mix32(rows + pos) + salts)  # (positions, batch, lanes)
  return -tf.math.log(-tf.math.log(uniform_from_bits(x)))[:, :, :vocab_size]


def row_seeds(seed, prompt_index, sample_index):
  """31-bit seeds of samples (prompt_index[i], sample_index[i]) (uint64
  arithmetic, the same on every machine)."""
  u64 = lambda v: tf.bitcast(tf.cast(v, tf.int64), tf.uint64)
  shift = lambda x, k: tf.bitwise.right_shift(x, tf.constant(k, tf.uint64))
  x = ((u64(seed) * tf.constant(1_000_003, tf.uint64) + u64(prompt_index))
       * tf.constant(1_000_033, tf.uint64) + u64(sample_index))
  x = tf.bitwise.bitwise_xor(x, shift(x, 29)) * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
  x = tf.bitwise.bitwise_and(tf.bitwise.bitwise_xor(x, shift(x, 32)),
                             tf.constant(0x7FFFFFFF, tf.uint64))
  return tf.cast(x, tf.int64)


def decoding_mode(*, greedy: bool, top_k: int, top_p: float, stop: Sequence[str]) -> int:
  """Which of generation's four decoding loops these settings run: greedy,
  plain sampling, filtered sampling (top-k / top-p), or any of them with
  stop strings (the one loop that carries each row's text)."""
  if any(s not in ("<eos>", "") for s in stop):
    return _STOP_STRINGS
  if greedy:
    return _GREEDY
  return _SAMPLED if top_k <= 0 and top_p >= 1.0 else _FILTERED


def _contains_any(texts, needles):
  """texts[i] contains some string of `needles` (1-D); (batch,) bool."""
  def body(k, found):
    pieces = tf.strings.split(texts, sep=needles[k])
    return k + 1, found | (pieces.row_lengths() > 1)
  _, found = tf.while_loop(lambda k, found: k < tf.size(needles), body,
                           (tf.constant(0), tf.zeros(tf.shape(texts), tf.bool)))
  return found


def _cut_at_first(texts, needles):
  """Each text up to the first occurrence of any of `needles`."""
  def body(k, out):
    pieces = tf.strings.split(texts, sep=needles[k], maxsplit=1)  # >= 1 per row
    before = tf.gather(pieces.flat_values, pieces.row_starts())
    shorter = tf.strings.length(before) < tf.strings.length(out)
    return k + 1, tf.where(shorter, before, out)
  _, out = tf.while_loop(lambda k, out: k < tf.size(needles), body,
                         (tf.constant(0), texts))
  return out


# The largest (vocab, 4 units) input table a LanguageModel keeps (4 MiB of
# float32). Looking a token's row up instead of multiplying its embedding
# by the bottom layer's kernel made sampled decoding of the reference char
# model (vocab 68, embedding 64, 2 x 256 units) 1.16-1.18x faster at batch 1
# and 1.08x at batch 256, and its prefill 1.06-1.07x at both (one-process
# A/Bs, 2026-12-03, AVX2 VM): 7.5% of a step's FLOPs and a product and an
# add fewer ops per step. A large vocabulary's table would be large (32k
# subwords x 1,024 units: 512 MB), and there the output layer's product is
# most of a step anyway.
INPUT_TABLE_MAX_FLOATS = 1 << 20
# With decode_ops="fused", the output layer and the greedy or sampled choice
# run as one op (TextgenPick) where the output kernel has at most this many
# floats (512 KB: the op reads it again for every 4 rows, from a core's
# cache): char and byte models. A word or subword model's output layer is a
# large product, which TensorFlow's matmul runs better.
PICK_MAX_FLOATS = 1 << 17


def _cell(z, c):
  """The LSTM's gate math (Keras's gates i, f, g, o): z = x W + h U + b
  (batch, 4 units) and the cell state c -> (h, c) after the step."""
  i, f, g, o = tf.split(z, 4, axis=1)
  c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
  return tf.sigmoid(o) * tf.tanh(c), c


def _dot(x, kernel):
  """x (..., in) @ kernel (in, out)."""
  if x.shape.rank == 2:  # tensordot wraps the same product in ~10 shape ops
    return tf.matmul(x, kernel)
  return tf.tensordot(x, kernel, 1)


class _Weights(NamedTuple):
  """The weights as tensors, read from the variables once per function call:
  read inside a loop, each step ran a ReadVariableOp per weight (8 of the
  ~70 ops of a decode step). Kernels are in the products' dtype."""
  embedding: tf.Tensor
  input_table: Optional[tf.Tensor]  # LanguageModel._input_table's value
  kernels: Tuple[tf.Tensor, ...]
  recurrent_kernels: Tuple[tf.Tensor, ...]
  biases: Tuple[tf.Tensor, ...]
  projection: Optional[Tuple[tf.Tensor, tf.Tensor]]  # (kernel, bias)
  output_kernel: tf.Tensor
  output_bias: tf.Tensor
  # With decode_ops="fused", per layer: the step's kernels packed for
  # TextgenLstmLayers (decode_ops.pack_kernel: [kernel; recurrent kernel],
  # or the recurrent kernel alone where an input table replaces the
  # product). None otherwise.
  packed: Optional[Tuple[tf.Tensor, ...]] = None


def _product(op, x, kernel):
  """op(x, kernel) (tf.matmul or _dot) in the kernel's dtype, the result in
  x's (float32): with bfloat16 kernels the product runs on the CPU's
  bfloat16 units while the state and gate math stay float32. With float32
  kernels it is op(x, kernel) itself."""
  if kernel.dtype == x.dtype:
    return op(x, kernel)
  return tf.cast(op(tf.cast(x, kernel.dtype), kernel), x.dtype)


def _at_least_one_column(dense, fill):
  """`dense` (batch, time) padded with `fill` to at least one column."""
  return tf.pad(dense, [[0, 0], [0, tf.maximum(1 - tf.shape(dense)[1], 0)]],
                constant_values=fill)


class LanguageModel(tf.Module):
  """Embedding -> LSTM x N -> logits, with its tokenizer, as TF functions.

  Args:
    spec: the architecture (dataspec.export.ModelSpec).
    weights: arrays named as in dataspec.export.
    tokenizer_spec: the dataset's tokenizer options.
    vocab: tokens by id (None for `byte`).
    precision: "float32", or "bfloat16": the matrix products run in bfloat16
      (on CPUs with AMX or AVX512_BF16 units, 1.6x the decode rate at batch
      256; slower at batch 1), the state, gate math and softmax in float32.
      Other text than float32's, so textgen-generate records it; the
      SavedModel the trainer writes is float32.
    decode_ops: "tensorflow", or "fused": compiled CPU ops
      (dataspec/decode_ops.cc) with float32 weights packed once per call:
      a position's step through every LSTM layer as one op,
      TextgenLstmLayers (the prompt's positions too: its states have the
      bits of decoding it token by token; 512-bit tiles on AVX-512 CPUs,
      the AVX2 tiles' bits), sampling's noise as one op (the
      same bits), and where the output layer is small (PICK_MAX_FLOATS)
      that layer with the greedy or sampled choice as one op, TextgenPick.
      The states then differ from the SavedModel's by float rounding, so a
      sample can differ where two tokens' noisy scores are that close;
      textgen-generate records it. Such a model cannot be saved. With
      bfloat16 (CPUs with AMX only): the layers' step is
      TextgenLstmLayersBf16, whose products run on AMX from bfloat16 [x, h]
      and weights with float32 sums (TensorFlow's bfloat16 matmul rounds
      its sums to bfloat16); TextgenPick's products are float32, of the
      bfloat16 output weights.

  Raises:
    ValueError: an unknown precision or decode_ops; "fused" with units not
      a multiple of 4 (16 with bfloat16), with bfloat16 on a CPU without
      AMX, or where the op cannot load (not an AVX2 x86-64 CPU, not
      built).
  """

  def __init__(self, spec: export_lib.ModelSpec, weights: Dict[str, np.ndarray],
               tokenizer_spec: tokenizer_lib.TokenizerSpec,
               vocab: Optional[Sequence[str]], precision: str = "float32",
               decode_ops: str = "tensorflow"):
    super().__init__(name="lstm_language_model")
    if precision not in PRECISIONS:
      raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if decode_ops not in DECODE_OPS:
      raise ValueError(f"decode_ops must be one of {DECODE_OPS}, got {decode_ops!r}")
    export_lib.check_weights(spec, weights)
    self._spec = spec
    self.decode_ops = decode_ops
    self._layers_op = self._noise_op = self._pick_op = None
    if decode_ops == "fused":
      bf16 = precision == "bfloat16"
      if bf16 and not decode_ops_lib.amx_runs_here():
        raise ValueError("decode_ops='fused' with precision='bfloat16' runs its products on "
                         "AMX, which this CPU has not (Intel Xeon Sapphire Rapids or later)")
      multiple = decode_ops_lib.GATE_PANEL_UNITS if bf16 else decode_ops_lib.PANEL_UNITS
      if spec.units % multiple:
        raise ValueError(f"decode_ops='fused' needs units a multiple of {multiple}"
                         f"{' with bfloat16' if bf16 else ''}; this model has {spec.units}")
      ops = decode_ops_lib.load()
      if ops is None:
        raise ValueError("decode_ops='fused': the op does not run here (an x86-64 CPU "
                         "with AVX2 and FMA, built by `python -m dataspec.decode_ops`; "
                         "the log says which is missing)")
      if bf16:  # the op's kernel asks Linux for AMX's tile state: now, on no rows
        try:
          ops.lstm_layers_bf16(x=tf.zeros([0, 0]), addend_rows=tf.zeros([0], tf.int32),
                               h=[tf.zeros([0, 16])], c=[tf.zeros([0, 16])],
                               packed=[tf.zeros([1, 4, 16, 32], tf.bfloat16)],
                               addends=[tf.zeros([64])])
        except tf.errors.FailedPreconditionError as e:
          raise ValueError(f"decode_ops='fused' with precision='bfloat16': {e.message}") from None
      self._layers_op = ops.lstm_layers_bf16 if bf16 else ops.lstm_layers
      self._noise_op = ops.gumbel_noise
      self._panel_units = decode_ops_lib.panel_units(spec.units)
      if not spec.projection_dim and spec.units * spec.vocab_size <= PICK_MAX_FLOATS:
        self._pick_op = ops.pick
    self.tokenizer = graph_tokenizer.GraphTokenizer(tokenizer_spec, vocab)
    if self.tokenizer.vocab_size != spec.vocab_size:
      raise ValueError(f"The tokenizer has {self.tokenizer.vocab_size} ids, the "
                       f"model {spec.vocab_size}")
    var = lambda value, name: tf.Variable(np.asarray(value, np.float32),
                                          trainable=False, name=name)
    self.embedding = var(weights["embedding"], "embedding")
    # Two products per step (x W + h U), not one of [x, h]: at batch 1 the
    # (1, in + units) x (in + units, 4 units) product took 85 us here, the
    # two halves 36 us together.
    self.lstm_kernels = [var(weights[f"lstm_{i}/kernel"], f"lstm_{i}/kernel")
                         for i in range(spec.num_layers)]
    self.lstm_recurrent_kernels = [
        var(weights[f"lstm_{i}/recurrent_kernel"], f"lstm_{i}/recurrent_kernel")
        for i in range(spec.num_layers)]
    self.lstm_biases = [var(weights[f"lstm_{i}/bias"], f"lstm_{i}/bias")
                        for i in range(spec.num_layers)]
    self.projection = ([var(weights["projection/kernel"], "projection/kernel"),
                        var(weights["projection/bias"], "projection/bias")]
                       if spec.projection_dim else [])
    self.output_kernel = var(weights["output/kernel"], "output/kernel")
    self.output_bias = var(weights["output/bias"], "output/bias")
    # The kernels the products use: the variables themselves in float32;
    # bfloat16 copies (constants of the traced functions, not saved) else.
    low = (lambda v: v) if precision == "float32" else (
        lambda v: tf.constant(tf.cast(v, precision)))
    self._kernels = [low(k) for k in self.lstm_kernels]
    self._recurrent_kernels = [low(k) for k in self.lstm_recurrent_kernels]
    self._projection_kernel = low(self.projection[0]) if self.projection else None
    self._output_kernel = low(self.output_kernel)
    # The bottom layer's input half depends on the token alone: embedding x
    # kernel + bias as a (vocab, 4 units) table, whose row a step looks up
    # instead of multiplying (see INPUT_TABLE_MAX_FLOATS).
    self._input_table = None
    if spec.vocab_size * 4 * spec.units <= INPUT_TABLE_MAX_FLOATS:
      self._input_table = tf.Variable(
          tf.matmul(self.embedding, self.lstm_kernels[0]) + self.lstm_biases[0],
          trainable=False, name="lstm_0/input_table")
    self._info = json.dumps({
        "model": json.loads(spec.to_json()),
        "tokenizer": tokenizer_spec.to_json_dict(),
        "start_id": self.tokenizer.start_id,
        "reserved_tokens": list(tokenizer_lib.RESERVED_TOKENS),
    }, sort_keys=True)

  # ---- the network ---------------------------------------------------------

  def _read_weights(self):
    """The weights as tensors (see _Weights); call once per traced function."""
    read = tf.convert_to_tensor
    packed = None
    output_kernel = read(self._output_kernel)
    if self._layers_op is not None:
      table = self._input_table is not None
      if self._output_kernel.dtype == tf.bfloat16:  # TextgenLstmLayersBf16 (AMX)
        pack = decode_ops_lib.pack_kernel_bf16
        kernels, recurrent_kernels = self.lstm_kernels, self.lstm_recurrent_kernels
        if self._pick_op is not None:  # its products are float32: of the bfloat16 weights
          output_kernel = tf.cast(output_kernel, tf.float32)
      else:
        pack = functools.partial(decode_ops_lib.pack_kernel, panel_units=self._panel_units)
        kernels, recurrent_kernels = self._kernels, self._recurrent_kernels
      packed = tuple(pack(None if layer == 0 and table else read(kernels[layer]), read(recurrent))
                     for layer, recurrent in enumerate(recurrent_kernels))
    return _Weights(
        packed=packed,
        embedding=read(self.embedding),
        input_table=None if self._input_table is None else read(self._input_table),
        kernels=tuple(read(k) for k in self._kernels),
        recurrent_kernels=tuple(read(k) for k in self._recurrent_kernels),
        biases=tuple(read(b) for b in self.lstm_biases),
        projection=((read(self._projection_kernel), read(self.projection[1]))
                    if self.projection else None),
        output_kernel=output_kernel, output_bias=read(self.output_bias))

  def _logits(self, x, w):
    """Top LSTM output (..., units) -> logits (..., vocab); w: _Weights."""
    if w.projection:
      x = _product(_dot, x, w.projection[0]) + w.projection[1]
    return _product(_dot, x, w.output_kernel) + w.output_bias

  def _head(self, top, w):
    """What the decoding loops carry between steps, from the top layer's
    output (batch, units): the logits, or with TextgenPick (see
    PICK_MAX_FLOATS) that output itself, the op's input."""
    return top if self._pick_op is not None else self._logits(top, w)

  def _step(self, tokens, h, c, w):
    """One position for the batch: tokens (batch,) -> the next choice's
    input (_head: the logits (batch, vocab) or the top layer's output),
    states h, c (tuples of (batch, units), one per layer); w: _Weights."""
    hs, cs = self._layers(tokens, h, c, w)
    return self._head(hs[-1], w), hs, cs

  def _layers(self, tokens, h, c, w):
    """Every layer's step for tokens (batch,) from states h, c (tuples of
    (batch, units), one per layer) -> h', c' (tuples); w: _Weights."""
    if w.packed is not None:  # decode_ops="fused"
      return self._fused_layers(tokens, h, c, w)
    x = tf.gather(w.embedding, tokens) if w.input_table is None else None
    hs, cs = [], []
    for layer in range(self._spec.num_layers):
      recurrent = _product(tf.matmul, h[layer], w.recurrent_kernels[layer])
      if layer == 0 and w.input_table is not None:
        z = tf.gather(w.input_table, tokens) + recurrent
      else:
        z = _product(tf.matmul, x, w.kernels[layer]) + recurrent + w.biases[layer]
      x, c_new = _cell(z, c[layer])
      hs.append(x)
      cs.append(c_new)
    return tuple(hs), tuple(cs)

  def _fused_layers(self, tokens, h, c, w):
    """decode_ops="fused": every layer's step for tokens (batch,) as one
    op, TextgenLstmLayers, from states h, c (tuples of (batch, units), one
    per layer) -> h', c' (tuples); w: _Weights."""
    if w.input_table is not None:  # the op reads the table's rows
      x, addend, rows = _NO_COLUMNS, w.input_table, tokens
    else:
      x, addend, rows = tf.gather(w.embedding, tokens), w.biases[0], _NO_ROWS
    hs, cs = self._layers_op(x=x, addend_rows=rows, h=list(h), c=list(c),
                             packed=list(w.packed), addends=[addend, *w.biases[1:]])
    return tuple(hs), tuple(cs)

  def _sequence(self, ids, lengths, h, c, w, *, top_outputs=True):
    """Runs rows of ids (batch, time), each valid up to lengths[i], from
    states h, c (layers, batch, units); w: _Weights.

    Returns:
      (top outputs (time, batch, units), h, c after each row's last id).
      Outputs past a row's length are not meaningful. Without top_outputs
      the top layer keeps none (its h is each row's last output) and the
      first item is None.
    """
    if w.packed is not None:
      return self._fused_sequence(ids, lengths, h, c, w, top_outputs=top_outputs)
    # Time-major from the start: transposing the ids costs nothing, where
    # transposing each layer's (batch, time, 4 units) input products and
    # outputs took 6% of a batch-256 prefill's op time.
    x = (tf.gather(w.embedding, tf.transpose(ids))  # (time, batch, embedding)
         if w.input_table is None else None)
    batch, time = tf.shape(ids)[0], tf.shape(ids)[1]
    units = self._spec.units
    hs, cs = [], []
    for layer in range(self._spec.num_layers):
      in_dim = self._spec.embedding_dim if layer == 0 else units
      if layer == 0 and w.input_table is not None:
        xw = tf.gather(w.input_table, tf.transpose(ids))  # (time, batch, 4 units)
      else:  # the input half of every step in one matmul: (time * batch, 4 units)
        xw = tf.reshape(_product(tf.matmul, tf.reshape(x, [-1, in_dim]), w.kernels[layer])
                        + w.biases[layer], [time, batch, 4 * units])
      recurrent = w.recurrent_kernels[layer]

      def step(t, hl, cl, xw=xw, recurrent=recurrent):
        h_new, c_new = _cell(xw[t] + _product(tf.matmul, hl, recurrent), cl)
        return h_new, c_new, h_new

      x, hl, cl = self._positions(step, h[layer], c[layer], lengths, time,
                                  keep=layer + 1 < self._spec.num_layers or top_outputs)
      hs.append(hl)
      cs.append(cl)
    return x, tf.stack(hs), tf.stack(cs)

  def _fused_sequence(self, ids, lengths, h, c, w, *, top_outputs):
    """_sequence with decode_ops="fused": position after position, each
    position's step through every layer as one op, as in decoding
    (_fused_layers), so a prompt leaves the states (bits included) of
    decoding it token by token. Layer after layer instead, with each upper
    layer's input half one TensorFlow matmul over the whole chunk (as the
    TensorFlow path runs), the prompt was 1.26-1.36x slower at batch 256
    (256 prompts of 128 tokens, in one process alternating, four runs,
    either one first; 1.15x at batch 1; 2-core AMD EPYC VM, 2026-12-04):
    the op's tile runs the input halves faster than that matmul, the
    threads meet once a position instead of once a layer's position, and
    no chunk's input products are held."""
    tokens = tf.transpose(ids)  # (time, batch)
    layers = self._spec.num_layers

    def step(t, hl, cl):
      hs, cs = self._fused_layers(tokens[t], hl, cl, w)
      return hs, cs, hs[-1]

    x, h, c = self._positions(step, tuple(tf.unstack(h, num=layers)),
                              tuple(tf.unstack(c, num=layers)), lengths, tf.shape(ids)[1],
                              keep=top_outputs)
    return x, tf.stack(h), tf.stack(c)

  def _positions(self, step, h, c, lengths, time, *, keep):
    """Runs step(t, h, c) -> (h', c', output (batch, units)) for t in [0,
    time), rows past their length (lengths (batch,)) keeping their state;
    h, c: (batch, units) each or tuples of them.

    Returns:
      (the outputs (time, batch, units), or None without keep; h; c).
    """
    # Up to the shortest row every row is active: no masks there (selecting
    # the state of finished rows took 7% of a batch-256 prefill's op time).
    all_active = tf.minimum(tf.reduce_min(lengths), time)

    def body(t, hl, cl, outputs, *, masked):
      h_new, c_new, output = step(t, hl, cl)
      outputs = outputs.write(t, output) if keep else outputs
      if masked:  # rows past their length keep their state
        active = (t < lengths)[:, None]
        kept = lambda new, old: tf.where(active, new, old)
        h_new, c_new = (tf.nest.map_structure(kept, h_new, hl),
                        tf.nest.map_structure(kept, c_new, cl))
      return t + 1, h_new, c_new, outputs

    state = (tf.constant(0), h, c, tf.TensorArray(tf.float32, size=time if keep else 0))
    state = tf.while_loop(lambda t, *_: t < all_active,
                          functools.partial(body, masked=False), state)
    _, h, c, outputs = tf.while_loop(lambda t, *_: t < time,
                                     functools.partial(body, masked=True), state)
    return (tf.ensure_shape(outputs.stack(), [None, None, self._spec.units]) if keep
            else None), h, c

  def _zero_state(self, batch):
    z = tf.zeros([self._spec.num_layers, batch, self._spec.units])
    return z, z

  # ---- text <-> ids ---------------------------------------------------------

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
  def tokenize(self, texts):
    """Token ids of each text: int32 ragged (batch, None)."""
    return self.tokenizer.encode(texts)

  @tf.function(autograph=False,
               input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, 1)])
  def detokenize(self, token_ids):
    """Text of each row of ids."""
    return self.tokenizer.decode(token_ids)

  @tf.function(autograph=False, input_signature=[])
  def info(self):
    """The model spec and tokenizer options, as JSON."""
    return tf.constant(self._info)

  # ---- scoring --------------------------------------------------------------

  def _score_chunk(self, prev_ids, token_ids, lengths, h, c, w):
    """Scores token_ids[i, :lengths[i]] given prev_ids[i] and states h, c."""
    inputs = tf.concat([prev_ids[:, None], token_ids[:, :-1]], axis=1)  # (batch, time)
    outputs, h, c = self._sequence(inputs, lengths, h, c, w)  # (time, batch, units)
    nll = tf.transpose(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.transpose(token_ids), logits=self._logits(outputs, w)))  # (batch, time)
    valid = tf.range(tf.shape(token_ids)[1])[None, :] < lengths[:, None]
    nll = tf.reduce_sum(tf.where(valid, tf.cast(nll, tf.float64), 0.0), axis=1)
    unknown = tf.reduce_sum(tf.cast(valid & tf.equal(token_ids, tokenizer_lib.UNK_ID),
                                    tf.int32), axis=1)
    last = tf.gather(token_ids, tf.maximum(lengths - 1, 0), batch_dims=1)
    last_ids = tf.where(lengths > 0, last, prev_ids)
    return nll, unknown, h, c, last_ids

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None], tf.int32, name="prev_ids"),
      tf.TensorSpec([None, None], tf.int32, name="token_ids"),
      tf.TensorSpec([None], tf.int32, name="lengths"),
      tf.TensorSpec([None, None, None], tf.float32, name="h"),
      tf.TensorSpec([None, None, None], tf.float32, name="c")])
  def score_tokens(self, prev_ids, token_ids, lengths, h, c):
    """One chunk of token streams, the LSTM state carried in and out.

    Args:
      prev_ids: (batch,) the token before each row's first one (a stream
        starts with the tokenizer's start id; see info()).
      token_ids: (batch, time) ids to score, row i valid up to lengths[i].
      lengths: (batch,).
      h, c: (layers, batch, units) states after prev_ids' predecessors
        (zeros at the start of a stream).

    Returns:
      nll (batch,) float64 summed nats, unknown_tokens, h, c, last_ids (the
      prev_ids of the next chunk).
    """
    nll, unknown, h, c, last_ids = self._score_chunk(prev_ids, token_ids, lengths, h, c,
                                                     self._read_weights())
    return {"nll": nll, "unknown_tokens": unknown, "h": h, "c": c, "last_ids": last_ids}

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
  def score(self, texts):
    """Log-likelihood of each whole text, the state carried from its start."""
    ids = self.tokenizer.encode(texts)  # (batch, None)
    batch = tf.shape(texts)[0]
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    dense = _at_least_one_column(ids.to_tensor(default_value=tokenizer_lib.PAD_ID),
                                 tokenizer_lib.PAD_ID)
    if self.tokenizer.start_id is not None:
      prev = tf.fill([batch], self.tokenizer.start_id)
    else:  # the first token is context only
      prev = dense[:, 0]
      dense = dense[:, 1:]
      lengths = tf.maximum(lengths - 1, 0)
    h, c = self._zero_state(batch)
    w = self._read_weights()

    def chunk_step(start, h, c, prev, total, unknown):
      chunk = dense[:, start:start + SCORE_CHUNK]
      chunk_lengths = tf.clip_by_value(lengths - start, 0, SCORE_CHUNK)
      nll, unk, h, c, prev = self._score_chunk(prev, chunk, chunk_lengths, h, c, w)
      return start + SCORE_CHUNK, h, c, prev, total + nll, unknown + unk

    _, _, _, _, total, unknown = tf.while_loop(
        lambda start, *_: start < tf.shape(dense)[1], chunk_step,
        (tf.constant(0), h, c, prev, tf.zeros([batch], tf.float64),
         tf.zeros([batch], tf.int32)))
    num_bytes = tf.strings.length(texts)
    return {
        "nll": total,
        "tokens": lengths,
        "loss": total / tf.cast(tf.maximum(lengths, 1), tf.float64),
        "bytes": num_bytes,
        "bits_per_byte": total / _LN2 / tf.cast(tf.maximum(num_bytes, 1), tf.float64),
        "unknown_tokens": unknown,
    }

  # ---- generation -----------------------------------------------------------

  def _filter(self, scaled, top_k, top_p):
    """Top-k (0 = off), then top-p (1 = off) of temperature-scaled logits."""
    neg_inf = tf.constant(-np.inf, tf.float32)
    # k >= 1 even where the branch is not taken: with the settings fixed
    # (sampler()) top_k is a constant, and a k of 0 fails at trace time.
    k = tf.clip_by_value(top_k, 1, self._spec.vocab_size)
    scaled = tf.cond(
        top_k > 0,
        lambda: tf.where(scaled < tf.math.top_k(scaled, k=k).values[:, -1:], neg_inf, scaled),
        lambda: scaled)

    def nucleus():
      sorted_logits = tf.sort(scaled, direction="DESCENDING")
      before = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
      keep = tf.reduce_sum(tf.cast(before < top_p, tf.int32), -1)
      cutoff = tf.gather(sorted_logits, tf.maximum(keep - 1, 0), batch_dims=1)
      return tf.where(scaled < cutoff[:, None], neg_inf, scaled)

    return tf.cond(top_p < 1.0, nucleus, lambda: scaled)

  def _prefill(self, ids, lengths, w):
    """Runs the prompts ids (batch, time), row i valid up to lengths[i] >= 1,
    PREFILL_CHUNK positions at a time (so memory does not grow with the
    prompt); w: _Weights.

    Returns:
      (_head after each row's last id: the logits (batch, vocab) or the top
      layer's output, h, c).
    """
    def chunk_step(start, h, c):
      chunk_lengths = tf.clip_by_value(lengths - start, 0, PREFILL_CHUNK)
      _, h, c = self._sequence(ids[:, start:start + PREFILL_CHUNK], chunk_lengths, h, c, w,
                               top_outputs=False)
      return start + PREFILL_CHUNK, h, c

    h, c = self._zero_state(tf.shape(ids)[0])
    # One chunk at a time: with the default (10 iterations in flight) the
    # bottom layer ran chunks ahead of the top one, each holding its own
    # input products, and a batch-256 bfloat16 prefill peaked 114 MB higher
    # (prefill alone 833 MB against 719) at the same speed (0.95-1.12x at
    # batch 1 to 256, float32 and bfloat16) and with the same logits.
    _, h, c = tf.while_loop(lambda start, *_: start < tf.shape(ids)[1], chunk_step,
                            (tf.constant(0), h, c), parallel_iterations=1)
    # A row's state stops at its last id: the top layer's h is its output there.
    return self._head(h[-1], w), h, c

  def _decode(self, logits, h, c, w, *, choose, max_new_tokens, stop_on_eos, seeds=None,
              greedy=None, stop_strings=None, keep_bytes=None, line_start=None):
    """Picks up to max_new_tokens tokens per row, one LSTM step each.

    Args:
      logits: _head after the prompt: the logits (batch, vocab) or the top
        layer's output; h, c: tuples of layer states.
      w: _Weights.
      choose: (logits, noise) -> (batch,) token ids, logits as above; noise
        is the position's (batch, vocab) Gumbel noise, None without seeds.
      max_new_tokens: scalar int32.
      stop_on_eos: scalar bool, or False when it is known to be when tracing
        (with no stop strings the loop then tracks no row's end).
      seeds: None (no sampling) or the rows' seeds (row_seeds()): the noise
        of up to NOISE_BLOCK positions is then hashed at once, in a loop
        around the steps' loop (hashed per step, its ~25 small ops made
        batch-1 decoding 1.23x slower; the same at batch 256).
      greedy: with seeds, None or a scalar bool: where true, choose ignores
        the noise and none is hashed (blocks of no values).
      stop_strings, keep_bytes: the stop strings (None: there are none; this
        loop then carries no text) and how many bytes of each row's newest
        text can hold one.
      line_start: with stop strings: bool (batch,), the prompt ended a line.

    Returns:
      (tokens (batch, n) int32, n, done, by_eos, ends): rows stop after
      ends[i] tokens (by a stop, by_eos if that was the end token).
    """
    batch = tf.shape(logits)[0]

    def eos_step(noise, n, out, h, c, logits, ends):
      # Without stop strings a row's one stop is the end token: ends holds
      # max_new_tokens + 1 until the row stops, then its token count (5
      # ops a step fewer than the done / by_eos flags below).
      token = choose(logits, noise)
      out = out.write(n, token)
      ends = tf.minimum(ends, tf.where(tf.equal(token, stop_id), n + 1, unstopped))
      logits, h, c = self._step(token, h, c, w)
      return n + 1, out, h, c, logits, ends

    def length_step(noise, n, out, h, c, logits):
      # Nothing stops a row before max_new_tokens.
      token = choose(logits, noise)
      out = out.write(n, token)
      logits, h, c = self._step(token, h, c, w)
      return n + 1, out, h, c, logits

    def text_step(noise, n, out, h, c, logits, ends, done, by_eos, tail, line_start):
      token = choose(logits, noise)
      out = out.write(n, token)
      eos_hit = stop_on_eos & tf.equal(token, tokenizer_lib.EOS_ID)
      piece, line_start = self.tokenizer.piece(token, line_start)
      tail = tf.strings.join([tail, piece])
      cut = tf.maximum(tf.strings.length(tail) - keep_bytes, 0)
      tail = tf.strings.substr(tail, cut, tf.fill(tf.shape(cut), keep_bytes))
      hit = ~done & (eos_hit | _contains_any(tail, stop_strings))
      ends = tf.where(hit, n + 1, ends)
      by_eos = tf.where(hit, eos_hit, by_eos)
      done = done | hit
      logits, h, c = self._step(token, h, c, w)
      return n + 1, out, h, c, logits, ends, done, by_eos, tail, line_start

    if stop_strings is None and stop_on_eos is False:
      step, extra, going = length_step, (), None
    elif stop_strings is None:
      stop_id = tf.where(stop_on_eos, tokenizer_lib.EOS_ID, -1)
      unstopped = max_new_tokens + 1
      extra = (tf.fill([batch], unstopped),)
      going = lambda n, ends: tf.reduce_any(ends > n)
      step = eos_step
    else:
      step = text_step
      false = tf.zeros([batch], tf.bool)
      extra = (tf.fill([batch], max_new_tokens), false, false, tf.fill([batch], ""),
               line_start)
      going = lambda n, ends, done, *_: ~tf.reduce_all(done)

    def before(limit):  # the loops' condition
      if going is None:
        return lambda n, *_: n < limit
      return lambda n, out, h, c, logits, *rest: (n < limit) & going(n, *rest)

    def noise_block(first, *state):
      # (block, batch, vocab) noise for positions first.., at most
      # _NOISE_BLOCK_VALUES values (a large vocab and batch: one position).
      per_position = batch * _noise_lanes(self._spec.vocab_size)
      size = tf.clip_by_value(_NOISE_BLOCK_VALUES // per_position, 1, NOISE_BLOCK)
      end = tf.minimum(first + size, max_new_tokens)
      positions = tf.range(first, end)
      if self._noise_op is not None:  # the same bits in one op (decode_noise.cc)
        hash_noise = lambda: self._noise_op(seeds, positions,
                                            vocab_size=self._spec.vocab_size)
      else:
        hash_noise = lambda: gumbel_noise(seeds, positions, self._spec.vocab_size)
      noise = hash_noise() if greedy is None else tf.cond(
          greedy, lambda: tf.zeros([end - first, batch, 0]), hash_noise)
      # noise[n - first], not tf.gather: a slice of the first dimension
      # shares the block's buffer where tf.gather copied it (70 KB a
      # position at batch 256); decoding 1.008-1.019x faster there.
      return tf.while_loop(
          before(end), lambda n, *rest: step(noise[n - first], n, *rest),
          (first,) + state)

    state = (tf.constant(0), tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                            element_shape=tf.TensorShape([None])),
             h, c, logits) + extra
    body = (functools.partial(step, None) if seeds is None else noise_block)
    n, out, _, _, _, *rest = tf.while_loop(before(max_new_tokens), body, state)
    if not extra:
      ends, done = tf.fill([batch], n), tf.zeros([batch], tf.bool)
      by_eos = done
    elif stop_strings is None:
      ends = rest[0]
      done = ends <= max_new_tokens
      by_eos, ends = done, tf.minimum(ends, n)
    else:
      ends, done, by_eos = rest[0], rest[1], rest[2]
    tokens = tf.cond(n > 0, lambda: tf.transpose(tf.reshape(out.stack(), [n, batch])),
                     lambda: tf.zeros([batch, 0], tf.int32))  # (batch, n)
    return tokens, n, done, by_eos, ends

  def _generate(self, prompts, prompt_index, sample_index, max_new_tokens,
                temperature, top_k, top_p, greedy, seed, stop, mode=None,
                stop_on_eos=None, normalized_prompts=False):
    # mode: None (the graph picks one of the four decoding loops per call,
    # all four traced) or decoding_mode() of these settings (only its loop);
    # stop_on_eos: None or whether stop holds "<eos>", known when tracing.
    # Rows with the same prompt (the samples of one prompt) share its
    # prefill: each distinct prompt is tokenized and run once, and its
    # state copied to its rows. A row's numbers do not depend on the rows
    # beside it, so this changes no output (tests: whatever the batching).
    distinct, row_prompt = tf.unique(prompts)
    ids = self.tokenizer.encode(distinct, normalized=normalized_prompts)  # (distinct, None)
    # An empty prompt (or one the tokenizer drops entirely) starts a line.
    start = (self.tokenizer.start_id if self.tokenizer.start_id is not None
             else tokenizer_lib.EOS_ID)
    distinct_tokens = tf.cast(ids.row_lengths(), tf.int32)
    lengths = tf.maximum(distinct_tokens, 1)
    dense = _at_least_one_column(ids.to_tensor(default_value=start), start)
    w = self._read_weights()
    logits, h, c = self._prefill(dense, lengths, w)
    # Subwords: the continuation keeps its leading space unless the prompt
    # ended a line, so prompt + text reads as the model wrote it.
    line_start = tf.equal(tf.gather(dense, lengths - 1, batch_dims=1), start)
    rows = lambda x, axis=0: tf.gather(x, row_prompt, axis=axis)
    prompt_tokens = rows(distinct_tokens)
    unknown = rows(graph_tokenizer.row_sums(ids, tf.equal(ids.flat_values,
                                                          tokenizer_lib.UNK_ID)))
    logits, h, c, line_start = rows(logits), rows(h, 1), rows(c, 1), rows(line_start)
    layers = self._spec.num_layers
    h, c = tuple(tf.unstack(h, num=layers)), tuple(tf.unstack(c, num=layers))
    seeds = row_seeds(seed, prompt_index, sample_index)

    if stop_on_eos is None:
      stop_on_eos = tf.reduce_any(tf.equal(stop, "<eos>"))
    stop_strings = tf.boolean_mask(stop, tf.not_equal(stop, "<eos>") & tf.not_equal(stop, ""))
    has_strings = tf.size(stop_strings) > 0
    # Only the end of the text can hold a stop string that the newest piece
    # completed: keep as many bytes as the longest stop string plus a piece.
    keep_bytes = (tf.reduce_max(tf.concat([tf.strings.length(stop_strings), [0]], 0))
                  + self.tokenizer.max_piece_bytes)

    # The loops carry _head's values: the logits, or with TextgenPick the
    # top layer's output, whose greedy and sampled choices are that op (the
    # same ops' results one by one: product, + bias, / temperature, + noise,
    # first largest) and whose other choices take the logits first.
    def greedy_choice(logits, _):
      if self._pick_op is not None:
        return self._pick_op(x=logits, kernel=w.output_kernel, bias=w.output_bias,
                             noise=_NO_COLUMNS, temperature=1.0)
      return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled(logits, noise):
      if self._pick_op is not None:
        return self._pick_op(x=logits, kernel=w.output_kernel, bias=w.output_bias,
                             noise=noise, temperature=temperature)
      return tf.argmax(logits / temperature + noise, axis=-1, output_type=tf.int32)

    def general(logits, noise):
      if self._pick_op is not None:
        logits = self._logits(logits, w)
      return tf.cond(greedy, lambda: tf.argmax(logits, axis=-1, output_type=tf.int32),
                     lambda: tf.argmax(self._filter(logits / temperature, top_k, top_p)
                                       + noise, axis=-1, output_type=tf.int32))

    # The common cases get loops without branches in them: a tf.cond inside
    # the loop cost more than the sampling itself (see bench_generate.py).
    loop = lambda choose, **kw: lambda: self._decode(
        logits, h, c, w, choose=choose, max_new_tokens=max_new_tokens,
        stop_on_eos=stop_on_eos, **kw)
    loops = [loop(greedy_choice), loop(sampled, seeds=seeds), loop(general, seeds=seeds),
             loop(general, seeds=seeds, greedy=greedy, stop_strings=stop_strings,
                  keep_bytes=keep_bytes, line_start=line_start)]  # by decoding_mode
    if mode is None:
      unfiltered = greedy | ((top_k <= 0) & (top_p >= 1.0))
      which = tf.where(has_strings, _STOP_STRINGS,
                       tf.where(unfiltered, tf.where(greedy, _GREEDY, _SAMPLED), _FILTERED))
      tokens, n, done, by_eos, ends = tf.switch_case(which, loops)
    else:
      tokens, n, done, by_eos, ends = loops[mode]()
    text_lengths = ends - tf.cast(by_eos, tf.int32)
    text = self.tokenizer.decode(graph_tokenizer.from_dense(tokens, text_lengths), line_start)
    if mode is None:
      text = tf.cond(has_strings, lambda: _cut_at_first(text, stop_strings), lambda: text)
    elif mode == _STOP_STRINGS:
      text = _cut_at_first(text, stop_strings)
    valid = tf.range(n)[None, :] < ends[:, None]
    return {
        "text": text,
        "num_tokens": ends,
        "finish_reason": tf.where(done, "stop", "length"),
        "token_ids": tf.where(valid, tokens, tokenizer_lib.PAD_ID),
        "prompt_tokens": prompt_tokens,
        "unknown_prompt_tokens": unknown,
    }

  _SETTINGS = [
      tf.TensorSpec([], tf.int32, name="max_new_tokens"),
      tf.TensorSpec([], tf.float32, name="temperature"),
      tf.TensorSpec([], tf.int32, name="top_k"),
      tf.TensorSpec([], tf.float32, name="top_p"),
      tf.TensorSpec([], tf.bool, name="greedy"),
      tf.TensorSpec([], tf.int64, name="seed"),
      tf.TensorSpec([None], tf.string, name="stop"),
  ]

  @tf.function(autograph=False,
               input_signature=[tf.TensorSpec([None], tf.string, name="prompts")] + _SETTINGS)
  def generate(self, prompts, max_new_tokens, temperature, top_k, top_p, greedy,
               seed, stop):
    """Continues each prompt (one sample each; see generate_samples)."""
    batch = tf.shape(prompts)[0]
    # A call of generate_samples' function (inlined when run), not a second
    # trace of the decoding: a SavedModel holds that graph once.
    return self.generate_samples(prompts, tf.range(batch, dtype=tf.int64),
                                 tf.zeros([batch], tf.int64), max_new_tokens, temperature,
                                 top_k, top_p, greedy, seed, stop)

  _SAMPLE_ROWS = [tf.TensorSpec([None], tf.string, name="prompts"),
                  tf.TensorSpec([None], tf.int64, name="prompt_index"),
                  tf.TensorSpec([None], tf.int64, name="sample_index")]

  @tf.function(autograph=False, input_signature=_SAMPLE_ROWS + _SETTINGS)
  def generate_samples(self, prompts, prompt_index, sample_index, max_new_tokens,
                       temperature, top_k, top_p, greedy, seed, stop):
    """Row i: sample `sample_index[i]` of prompt number `prompt_index[i]`."""
    return self._generate(prompts, prompt_index, sample_index, max_new_tokens,
                          temperature, top_k, top_p, greedy, seed, stop)

  @classmethod
  def setting_inputs(cls, **settings):
    """generate_samples' settings but max_new_tokens (temperature, top_k,
    top_p, greedy, seed, stop) from Python values, as tensors of the
    signature's dtypes."""
    specs = {spec.name: spec for spec in cls._SETTINGS if spec.name != "max_new_tokens"}
    if settings.keys() != specs.keys():
      raise TypeError(f"settings {sorted(settings)}, expected {sorted(specs)}")
    return {name: tf.constant(value, specs[name].dtype) for name, value in settings.items()}

  def sampler(self, *, temperature: float, top_k: int, top_p: float, greedy: bool,
              seed: int, stop: Sequence[str], normalized_prompts: bool = False):
    """generate_samples with these settings fixed, as a tf.function of
    (prompts, prompt_index, sample_index, max_new_tokens): the same outputs,
    but it traces only the decoding loop the settings use, where
    generate_samples (whose settings are inputs) traces all four and picks
    one per call, and without "<eos>" or stop strings its loop tracks no
    row's end. What a job with fixed settings runs (textgen-generate): the
    other three loops cost a batch-1 process 40 MB more peak memory and its
    first call twice the time.

    With normalized_prompts the prompts must be
    dataspec.tokenizer.encoding_text()'s (the same normalization, in
    Python): the function then holds no normalization, whose graph (the
    default nfc: ~600 nodes, each costing memory when the function first
    runs) and Unicode tables cost a batch-1 job 15 MB of peak memory."""
    settings = self.setting_inputs(temperature=temperature, top_k=top_k, top_p=top_p,
                                   greedy=greedy, seed=seed, stop=stop)
    mode = decoding_mode(greedy=greedy, top_k=top_k, top_p=top_p, stop=stop)

    @tf.function(autograph=False, input_signature=self._SAMPLE_ROWS + self._SETTINGS[:1])
    def generate_samples(prompts, prompt_index, sample_index, max_new_tokens):
      return self._generate(prompts, prompt_index, sample_index, max_new_tokens,
                            mode=mode, stop_on_eos="<eos>" in stop,
                            normalized_prompts=normalized_prompts, **settings)
    return generate_samples


def save(path: str, model: LanguageModel):
  """Writes `model` as a SavedModel at local `path`.

  Raises:
    ValueError: the model runs the fused decode op, which a SavedModel
      served without this project's code could not load.
  """
  if model.decode_ops != "tensorflow":
    raise ValueError(f"A SavedModel holds TensorFlow's ops only; this model runs "
                     f"decode_ops={model.decode_ops!r}")
  # The functions, not concrete functions: traced outside tf.saved_model.save
  # (a different context), each would be traced twice.
  signatures = {"serving_default": model.generate, "generate": model.generate,
                "score": model.score}
  tf.saved_model.save(model, path, signatures=signatures)
