r"""Generation throughput: ours against plain Keras, PyTorch and the tutorial loop.

  python bench/bench_generate.py [--rounds=3] [--batch_sizes=1,256]

The reference char model (2x LSTM 256, embedding 64, the bundled corpus's 68
ids, window 128) with random weights (throughput does not depend on them),
each measurement in a fresh process (so peak RSS is its own), interleaved in
every round:

  ours      dataspec.serving.LanguageModel.sampler, what textgen-generate
            runs (the SavedModel's `generate` with the settings fixed and
            the prompts normalized in Python, not in the graph), with
            sampling on (temperature 1, top-k/top-p off): timed for 1 and for
            --new_tokens new tokens after a 128-token prompt; the difference
            is the decode rate, the first call the prefill (prompt tokens /
            its time, which also tokenizes and detokenizes). Every row has
            its own prompt; rows with the same prompt share one prefill,
            measured apart with one prompt in all rows.
  keras     a plain Keras greedy graph loop: tf.function over Embedding,
            two LSTMCells and Dense, argmax, one step per token.
  torch     PyTorch 2.13 (CPU build, pip install -e '.[bench]'):
            nn.LSTM(2 layers) stepped with its state under inference_mode,
            greedy; prefill = one nn.LSTM call over the prompt.
  tutorial  what the Keras text-generation tutorials do: for each new token
            model.predict() on the last 128 tokens, argmax.
  ours_signature
            ours through generate_samples, the settings as inputs: what the
            SavedModel's `generate` signature runs (all four decoding loops
            traced, one picked per call).
  ours_fused
            ours with textgen-generate's --decode_ops=fused: a decode step's
            LSTM layers as one compiled op, sampling's noise as another, the
            output layer with the choice of the token as a third
            (dataspec/decode_ops.py; AVX2 x86-64 CPUs). Also timed: the
            layers op alone, step after step (the same difference of 1 and
            --new_tokens steps), which is what the fused prefill runs for
            each prompt position; so prefill / decode can be at most that
            rate / the decode rate (printed as "at most").
  ours_bf16, torch_bf16
            ours with textgen-generate's --precision=bfloat16 (products in
            bfloat16), PyTorch's loop under torch.autocast("cpu",
            torch.bfloat16): fast only on CPUs with AMX or AVX512_BF16.
  ours_fused_bf16
            ours with --decode_ops=fused --precision=bfloat16: the layers'
            products on AMX (TextgenLstmLayersBf16; CPUs with AMX only).

Prints the machine and its 1-minute load average before and after, then per
batch size the median decode tokens/s of each, ours' prefill rate, the
ratios and each one's peak RSS (and RSS after start-up, before the model),
then peak RSS and peak anonymous memory side by side: the second without
shared libraries' pages, whose count depends on the host's page cache, from
one more untimed run of each (sampling it slows a run; see
machine.run_worker), every round's decode rates, and each ratio taken round
by round (its median, range, and how many rounds reach 1.5x).

With --pairs=N, then for each --paired a/b@batch (by default the decode
targets' two: ours_fused/torch at batch 256, ours_fused/keras at batch 1):
a and b each started once and kept running (set up, traced and warmed up
once), then measured N times each, one right after the other, alternating
which goes first: under a second apart instead of a fresh process's
start-up apart, so each pair's ratio sees the same minute of a VM whose
speed swings by the minute. Prints the medians, their ratio, the pairs'
ratios (median, range, how many reach 1.5x and 1.0x) and the most CPU time
the idle one used while the other was measured (it should be ~0).
"""

import functools
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=wrong-import-position
import reference  # pylint: disable=wrong-import-position

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (0: only --pairs).",
                               lower_bound=0)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 256, "Decoded tokens per measurement.",
                                   lower_bound=2)
_TUTORIAL_TOKENS = flags.DEFINE_integer("tutorial_tokens", 8, "Tokens of the tutorial loop.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "256"], "Batch sizes.")
_IMPLS = flags.DEFINE_list("impls", ["ours", "ours_fused", "keras", "torch", "tutorial",
                                     "ours_bf16", "torch_bf16", "ours_fused_bf16"],
                           "What to measure. By default the *_bf16 ones only on "
                           "CPUs with bfloat16 units (AMX, AVX512_BF16), ours_fused "
                           "only with AVX2 and FMA, ours_fused_bf16 only with AMX.")
_PAIRS = flags.DEFINE_integer(
    "pairs", 0, "After the rounds, this many paired measurements of each --paired "
    "ratio: both workers started once and kept, measured one right after the other "
    "in the order a b, b a, a b, ...; 0: none.", lower_bound=0)
_PAIRED = flags.DEFINE_list("paired", ["ours_fused/torch@256", "ours_fused/keras@1",
                                       "ours_fused_bf16/torch_bf16@256"],
                            "The decode ratios --pairs measures, as a/b@batch.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: measure one implementation.")
_SERVE = flags.DEFINE_bool("serve", False, "Internal: with --worker, set up once, then "
                           "measure on each request (machine.serve).")
_BATCH = flags.DEFINE_integer("batch", 1, "Internal: the worker's batch size.")

EMBEDDING, UNITS, LAYERS, WINDOW = (reference.EMBEDDING, reference.UNITS, reference.LAYERS,
                                    reference.WINDOW)
corpus = reference.corpus


def decode_rate(batch, new_tokens, many, one) -> float:
  """Tokens/s of the new_tokens - 1 steps between a 1-token run (one
  seconds) and a new_tokens run (many)."""
  if many <= one:
    raise RuntimeError(f"--new_tokens={new_tokens}: the run of {new_tokens} tokens "
                       f"({many:.4f} s) was no slower than the run of 1 ({one:.4f} s); "
                       "decode more tokens to measure the difference")
  return batch * (new_tokens - 1) / (many - one)


def best_of(fn, times=3) -> float:
  best = float("inf")
  for _ in range(times):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


# ---- workers (each in its own process) ---------------------------------------

def work_ours(batch, new_tokens, *, precision="float32", signature=False,
              decode_ops="tensorflow"):
  # As textgen-generate imports TensorFlow: without Keras.
  from dataspec import lean_tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from dataspec import tf_allocator  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tf_allocator.use_bfc_allocator()  # as textgen-generate does, before any op
  if decode_ops == "fused":
    from dataspec import decode_ops as decode_ops_lib  # pylint: disable=g-import-not-at-top
    decode_ops_lib.use_one_inter_op_thread()  # as textgen-generate does
  start_rss = machine.peak_rss_mb()

  def model_and_prompts():
    # Like textgen-generate, which keeps neither the weights it read (the
    # model has its own copy) nor more text than the prompts.
    text = corpus()
    lm = reference.language_model(text, precision=precision, decode_ops=decode_ops)
    # A different prompt in every row (128 chars = 128 tokens): rows with
    # the same prompt share one prefill, measured apart below ("shared").
    return lm, [text[i * WINDOW:(i + 1) * WINDOW] for i in range(batch)]

  lm, texts = model_and_prompts()
  assert len(set(texts)) == batch
  prompts, one_prompt = texts, texts[:1] * batch
  settings = dict(temperature=1.0, top_k=0, top_p=1.0, greedy=False, seed=0, stop=())
  index, zeros = tf.range(batch, dtype=tf.int64), tf.zeros([batch], tf.int64)
  if signature:
    inputs = lm.setting_inputs(**settings)
    generate = lambda texts, n: lm.generate_samples(tf.constant(texts), index, zeros, n,
                                                    **inputs)
  else:
    # As textgen-generate: the prompts normalized in Python, none in the graph.
    fixed = lm.sampler(**settings, normalized_prompts=True)
    spec = lm.tokenizer.spec
    generate = lambda texts, n: fixed(
        tf.constant([tokenizer_lib.encoding_text(t, spec) for t in texts]), index, zeros, n)

  def run(n, texts=prompts):
    generate(texts, tf.constant(n))["token_ids"].numpy()

  run(2)  # trace

  # The LSTM layers alone, step after step: a decode step without the
  # choice of its token (the output layer, the noise, the pick), and what
  # the fused prefill runs for each prompt position (serving's
  # _fused_sequence steps the same op), so prefill / decode can be at most
  # this rate / the decode rate.
  @tf.function
  def layers(n):
    w = lm._read_weights()  # pylint: disable=protected-access
    tokens = tf.range(batch) % lm.tokenizer.vocab_size
    h = c = tuple(tf.zeros([batch, UNITS]) for _ in range(LAYERS))
    for _ in tf.range(n):
      h, c = lm._layers(tokens, h, c, w)  # pylint: disable=protected-access
    return h[-1]

  def measure(paired=False):
    one = best_of(lambda: run(1))
    many = best_of(lambda: run(new_tokens), times=1 if batch > 1 else 2)
    result = {"decode": decode_rate(batch, new_tokens, many, one),
              "prefill": batch * WINDOW / one}
    if not paired:
      shared = best_of(lambda: run(1, one_prompt))  # batch samples of one prompt
      result["prefill_shared"] = batch * WINDOW / shared
      if decode_ops == "fused":
        layers(tf.constant(2)).numpy()  # trace
        one = best_of(lambda: layers(tf.constant(1)).numpy())
        many = best_of(lambda: layers(tf.constant(new_tokens)).numpy(),
                       times=1 if batch > 1 else 2)
        result["layers"] = decode_rate(batch, new_tokens, many, one)
    return result

  return start_rss, measure


def work_keras(batch, new_tokens):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  start_rss = machine.peak_rss_mb()
  vocab = len(set(corpus())) + 3
  embedding = keras.layers.Embedding(vocab, EMBEDDING)
  cells = [keras.layers.LSTMCell(UNITS) for _ in range(LAYERS)]
  dense = keras.layers.Dense(vocab)

  @tf.function
  def greedy(tokens, states, n):
    out = tf.TensorArray(tf.int32, size=n)
    for i in tf.range(n):
      x = embedding(tokens)
      new_states = []
      for cell, state in zip(cells, states):
        x, state = cell(x, state)
        new_states.append(state)
      states = new_states
      tokens = tf.argmax(dense(x), axis=-1, output_type=tf.int32)
      out = out.write(i, tokens)
    return out.stack()

  tokens = tf.zeros([batch], tf.int32)
  states = [[tf.zeros([batch, UNITS])] * 2] * LAYERS
  greedy(tokens, states, tf.constant(2)).numpy()  # trace

  def measure(paired=False):  # pylint: disable=unused-argument
    one = best_of(lambda: greedy(tokens, states, tf.constant(1)).numpy())
    many = best_of(lambda: greedy(tokens, states, tf.constant(new_tokens)).numpy(),
                   times=1 if batch > 1 else 2)
    return {"decode": decode_rate(batch, new_tokens, many, one)}

  return start_rss, measure


def work_torch(batch, new_tokens, *, bfloat16=False):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  start_rss = machine.peak_rss_mb()
  vocab = len(set(corpus())) + 3
  embedding = torch.nn.Embedding(vocab, EMBEDDING)
  lstm = torch.nn.LSTM(EMBEDDING, UNITS, num_layers=LAYERS, batch_first=True)
  output = torch.nn.Linear(UNITS, vocab)
  prompt = torch.randint(3, vocab, (batch, WINDOW))

  low = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=bfloat16)

  @torch.inference_mode()
  def prefill():
    with low():
      top, state = lstm(embedding(prompt))
      return output(top[:, -1]).argmax(-1), state

  @torch.inference_mode()
  def decode(tokens, state, n):
    out = []
    with low():
      for _ in range(n):
        top, state = lstm(embedding(tokens[:, None]), state)
        tokens = output(top[:, 0]).argmax(-1)
        out.append(tokens)
    return torch.stack(out, 1)

  tokens, state = prefill()
  decode(tokens, state, 2)

  def measure(paired=False):
    result = {} if paired else {"prefill": batch * WINDOW / best_of(prefill)}
    one = best_of(lambda: decode(tokens, state, 1))
    many = best_of(lambda: decode(tokens, state, new_tokens), times=1 if batch > 1 else 2)
    return dict(result, decode=decode_rate(batch, new_tokens, many, one))

  return start_rss, measure


def work_tutorial(batch, new_tokens):
  import tutorial  # pylint: disable=g-import-not-at-top
  start_rss = machine.peak_rss_mb()
  vocab = len(set(corpus())) + 3
  model = tutorial.tutorial_model(vocab=vocab, window=WINDOW, embedding=EMBEDDING,
                                     units=UNITS, layers=LAYERS)
  seq = np.random.default_rng(0).integers(3, vocab, (batch, WINDOW)).astype(np.int32)
  model.predict(seq, verbose=0)  # warm-up

  def measure(paired=False):  # pylint: disable=unused-argument
    out = seq
    start = time.perf_counter()
    for _ in range(new_tokens):
      probs = model.predict(out[:, -WINDOW:], verbose=0)  # (batch, vocab)
      out = np.concatenate([out, probs.argmax(-1)[:, None].astype(np.int32)], axis=1)
    return {"decode": batch * new_tokens / (time.perf_counter() - start)}

  return start_rss, measure


WORKERS = {"ours": work_ours, "keras": work_keras, "torch": work_torch,
           "tutorial": work_tutorial,
           "ours_signature": functools.partial(work_ours, signature=True),
           "ours_bf16": functools.partial(work_ours, precision="bfloat16"),
           "ours_fused": functools.partial(work_ours, decode_ops="fused"),
           "torch_bf16": functools.partial(work_torch, bfloat16=True),
           "ours_fused_bf16": functools.partial(work_ours, precision="bfloat16",
                                                decode_ops="fused")}
# "ours / x" columns for the float32 ones; bfloat16 against its own kind.
BFLOAT16_RATIOS = (("ours_bf16", "torch_bf16"), ("ours_bf16", "ours"),
                   ("ours_fused_bf16", "torch_bf16"), ("ours_fused_bf16", "ours_fused"))


def worker_args(impl, batch):
  tokens = _TUTORIAL_TOKENS.value if impl == "tutorial" else _NEW_TOKENS.value
  return f"--worker={impl}", f"--batch={batch}", f"--new_tokens={tokens}"


def run_worker(impl, batch, *, anonymous_memory=False):
  return machine.run_worker(__file__, *worker_args(impl, batch),
                            anonymous_memory=anonymous_memory)


def parse_paired(values, impls, *, explicit):
  """[(a, b, batch)] from --paired's "a/b@batch" values, a and b of impls
  (what runs). A pair naming something not measured is an error if the
  user gave --paired (explicit), else left out (the default's ours_fused
  needs AVX2)."""
  pairs = []
  for value in values:
    names, _, batch = value.partition("@")
    parts = names.split("/")
    if len(parts) == 2 and batch.isdigit() and int(batch) >= 1:
      if all(p in impls for p in parts):
        pairs.append((*parts, int(batch)))
        continue
      if not explicit:
        continue
    raise app.UsageError(f"--paired={value}: want a/b@batch, a and b two of the "
                         f"implementations measured ({', '.join(impls)}), batch a "
                         "positive number")
  return pairs


def print_paired(pairs):
  """--pairs: each (a, b, batch) of `pairs` from workers kept running
  (machine.paired)."""
  for a, b, batch in pairs:
    with machine.Worker(__file__, *worker_args(a, batch), "--serve") as wa, \
        machine.Worker(__file__, *worker_args(b, batch), "--serve") as wb:
      runs = machine.paired(wa, wb, _PAIRS.value)
    ra = [r[0]["decode"] for r in runs]
    rb = [r[1]["decode"] for r in runs]
    ratios = [x / y for x, y in zip(ra, rb)]
    print(f"\npaired decode, batch {batch}, {a} / {b} ({len(runs)} pairs, each a and b "
          f"measured one right after the other, alternating which first): "
          f"{statistics.median(ra):,.0f} against {statistics.median(rb):,.0f} tokens/s, "
          f"ratio of the medians {statistics.median(ra) / statistics.median(rb):.2f}x; "
          f"the pairs' ratios median {statistics.median(ratios):.2f}x, "
          f"{min(ratios):.2f}-{max(ratios):.2f}x, {sum(v >= 1.5 for v in ratios)} of "
          f"{len(ratios)} at 1.5x or more, {sum(v >= 1.0 for v in ratios)} at 1.0x or more; "
          f"the idle one's CPU time while the other was measured at most "
          f"{max(r[2] for r in runs):.2f} s")
    print(f"every pair ({a}, {b} tokens/s): " +
          ", ".join(f"{x:,.0f} / {y:,.0f}" for x, y in zip(ra, rb)), flush=True)


def main(_):
  if _WORKER.value:
    start_rss, measure = WORKERS[_WORKER.value](_BATCH.value, _NEW_TOKENS.value)
    if _SERVE.value:
      machine.serve(lambda: measure(paired=True), start_rss_mb=start_rss)
      return
    print(json.dumps(dict(measure(), start_rss_mb=start_rss,
                          peak_rss_mb=machine.peak_rss_mb())))
    return
  if not _ROUNDS.value and not _PAIRS.value:
    raise app.UsageError("--rounds=0 and --pairs=0: nothing to measure")
  impls, left_out = machine.measurable_impls(_IMPLS.value, explicit=_IMPLS.present)
  paired_ratios = (parse_paired(_PAIRED.value, impls, explicit=_PAIRED.present)
                   if _PAIRS.value else [])
  print(machine.describe())
  if left_out:
    print(left_out)
  batches = [int(b) for b in _BATCHES.value]
  if _ROUNDS.value:
    print_rounds(impls, batches)
  if paired_ratios:
    print_paired(paired_ratios)
    print(f"\n{machine.describe()} (after the pairs)")


def print_rounds(impls, batches):
  """--rounds: every implementation in a fresh process per round."""
  results = {(i, b): [] for i in impls for b in batches}
  for round_index in range(_ROUNDS.value):
    for batch in batches:
      for impl in impls:
        result = run_worker(impl, batch)
        results[impl, batch].append(result)
        print(f"round {round_index + 1} batch {batch} {impl}: decode "
              f"{result['decode']:,.0f} tokens/s" +
              (f", prefill {result['prefill']:,.0f} tokens/s" if "prefill" in result else "") +
              f", peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
  anon = machine.anonymous_peaks(
      lambda impl, batch: run_worker(impl, batch, anonymous_memory=True), impls, batches)
  print(f"\n{machine.describe()} (after)")
  print(f"\nmodel: {LAYERS}x LSTM {UNITS}, embedding {EMBEDDING}, window {WINDOW}; "
        f"ours samples (temperature 1), the others are greedy; "
        f"{_ROUNDS.value} rounds, medians\n")
  med = lambda i, b, key: statistics.median(r[key] for r in results[i, b])
  others = [i for i in impls if not i.startswith("ours") and not i.endswith("_bf16")]
  pairs = [(o, i) for o in ("ours", "ours_fused") if o in impls for i in others] + [
      (a, b) for a, b in BFLOAT16_RATIOS + (("ours_fused", "ours"),)
      if a in impls and b in impls]
  rss = {(i, b): max(r["peak_rss_mb"] for r in results[i, b]) for i in impls for b in batches}
  # The prefill columns: ours', else the first of ours' variants measured.
  lead = "ours" if "ours" in impls else next((i for i in impls if i.startswith("ours")), None)
  header = ([f"{i} decode tokens/s" for i in impls] +
            ([f"{lead} prefill tokens/s", "prefill / decode"] if lead else []) +
            [f"{a} / {b}" for a, b in pairs] + [f"{i} peak RSS (start-up)" for i in impls])
  print("| batch | " + " | ".join(header) + " |")
  print("|---:|" + "---:|" * len(header))
  for batch in batches:
    decode = {i: med(i, batch, "decode") for i in impls}
    prefill = med(lead, batch, "prefill") if lead else None
    cells = ([f"{decode[i]:,.0f}" for i in impls] +
             ([f"{prefill:,.0f}", f"{prefill / decode[lead]:.1f}x"] if lead else []) +
             [f"{decode[a] / decode[b]:.2f}x" for a, b in pairs] +
             [f"{rss[i, batch]:,.0f} MB "
              f"({min(r['start_rss_mb'] for r in results[i, batch]):,.0f})" for i in impls])
    print(f"| {batch} | " + " | ".join(cells) + " |")
  machine.print_memory_table(impls, batches, rss, anon, (
      ("ours", "torch"), ("ours", "keras"), ("ours_fused", "torch"),
      ("ours_signature", "torch"), ("ours_bf16", "torch_bf16"),
      ("ours_fused_bf16", "torch_bf16")))
  if "ours" in impls:
    print("\nours prefill tokens/s with one prompt in every row (the samples of one "
          "prompt share its prefill): " + ", ".join(
              f"batch {b}: {med('ours', b, 'prefill_shared'):,.0f}" for b in batches))
  for impl in ("ours_fused", "ours_bf16", "ours_fused_bf16", "torch", "torch_bf16"):
    if impl in impls:
      print(f"\n{impl} prefill tokens/s: " + ", ".join(
          f"batch {b}: {med(impl, b, 'prefill'):,.0f}" for b in batches))
  for impl in ("ours_fused", "ours_fused_bf16"):
    if impl in impls:
      print(f"\n{impl}, the LSTM layers alone (a decode step without the choice of its "
            "token; a prefill position runs the same op, so prefill / decode is at most "
            "their rate / the decode rate): " + ", ".join(
                f"batch {b}: {med(impl, b, 'layers'):,.0f} tokens/s, prefill / decode "
                f"at most {med(impl, b, 'layers') / med(impl, b, 'decode'):.2f}x "
                f"(measured {med(impl, b, 'prefill') / med(impl, b, 'decode'):.2f}x)"
                for b in batches))
  print("\nevery round (decode tokens/s): " + "; ".join(
      f"{i}@{b}: " + ", ".join(f"{r['decode']:,.0f}" for r in results[i, b])
      for b in batches for i in impls))
  # Each round's two runs are next to each other in time, so their ratio
  # drifts less with this kind of VM's slow and fast minutes than the
  # medians' ratio above.
  print("\ndecode ratios round by round (median; lowest-highest; rounds at 1.5x or "
        "more): " + "; ".join(
            f"{a} / {b}@{batch}: {statistics.median(x):.2f}x; {min(x):.2f}-{max(x):.2f}x; "
            f"{sum(v >= 1.5 for v in x)} of {len(x)}"
            for batch in batches for a, b in pairs
            for x in [[ra["decode"] / rb["decode"]
                       for ra, rb in zip(results[a, batch], results[b, batch])]]))


if __name__ == "__main__":
  app.run(main)
