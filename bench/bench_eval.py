r"""Scoring throughput of textgen-eval: the SavedModel against the fused ops.

  python bench/bench_eval.py [--rounds=3] [--batch_sizes=1,16]
                             [--doc_bytes=65536]

The reference char model (2x LSTM 256, embedding 64, the bundled corpus's 68
ids) with random weights (throughput does not depend on them) scores
--batch_sizes documents side by side, each the next --doc_bytes of the
bundled corpus, with textgen-eval's own loop (generate.evaluate.
score_documents: blocks read and tokenized, chunks of 512 tokens, the state
carried over each whole document). One document at a time is the case of a
corpus that is one long text (a published test set scored as one stream).

  saved_model      what textgen-eval runs by default: the SavedModel saved
                   from the model (dataspec.serving.save, once, in a
                   process of its own), loaded with tf.saved_model.load
  ours_fused       --decode_ops=fused: the export's weights in this process
                   (evaluate.load_model), each position's step through both
                   layers as one compiled op
  ours_fused_bf16  --decode_ops=fused --precision=bfloat16: the layers'
                   products on AMX (CPUs with AMX only)

Each measurement is a fresh process (its peak RSS its own), warmed up on a
short document first; rounds are interleaved. Prints the machine and its
1-minute load average before and after, every round, the median tokens/s of
each, the ratios to saved_model, and the total loss of each (the same model
and text: float32 fused equals the SavedModel's up to float rounding).
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # pylint: disable=wrong-import-position
import reference  # pylint: disable=wrong-import-position

_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "16"], "Documents scored side by side.")
_DOC_BYTES = flags.DEFINE_integer("doc_bytes", 65536, "Bytes of each document.",
                                  lower_bound=1024)
_IMPLS = flags.DEFINE_list("impls", ["saved_model", "ours_fused", "ours_fused_bf16"],
                           "What to measure. By default ours_fused only with AVX2 and "
                           "FMA, ours_fused_bf16 only with AMX.")
_WORKER = flags.DEFINE_string("worker", None, "Internal: measure one implementation "
                              "(or `save`: write the SavedModel).")
_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "Internal: the SavedModel's path.")
_BATCH = flags.DEFINE_integer("batch", 1, "Internal: the worker's batch size.")

CORPUS = reference.CORPUS
SETTINGS = {"saved_model": ("float32", "tensorflow"), "ours_fused": ("float32", "fused"),
            "ours_fused_bf16": ("bfloat16", "fused")}


def save(path):
  """Writes the reference model's SavedModel (as an export's) at path."""
  from dataspec import lean_tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  from dataspec import serving  # pylint: disable=g-import-not-at-top
  serving.save(path, reference.language_model(reference.corpus()))


def work(impl, batch, doc_bytes, saved_model):
  """Scores `batch` documents of doc_bytes with impl; returns its figures."""
  from dataspec import lean_tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  from dataspec import tf_allocator  # pylint: disable=g-import-not-at-top
  tf_allocator.use_bfc_allocator()  # as textgen-eval does, before any op
  precision, ops = SETTINGS[impl]
  if ops == "fused":
    from dataspec import decode_ops  # pylint: disable=g-import-not-at-top
    decode_ops.use_one_inter_op_thread()  # as textgen-eval does
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from generate import evaluate  # pylint: disable=g-import-not-at-top
  size = os.path.getsize(CORPUS)
  start_rss = machine.peak_rss_mb()
  model = (tf.saved_model.load(saved_model) if impl == "saved_model" else
           reference.language_model(reference.corpus(), precision=precision,
                                    decode_ops=ops))
  # The bundled corpus is ASCII: any byte offset is a character boundary.
  doc = lambda i, n: evaluate.Document(CORPUS, i * doc_bytes, i * doc_bytes + n, size)
  score = lambda docs: evaluate.score_documents(model, docs, batch_size=batch,
                                                chunk_tokens=512, progress_seconds=1e9)
  score([doc(batch, 2048)] * batch)  # warm-up: traces at this batch size
  start = time.perf_counter()
  _, _, total, _ = score([doc(i, doc_bytes) for i in range(batch)])
  seconds = time.perf_counter() - start
  return {"tokens_per_second": total["tokens"] / seconds, "loss": total["nll"] / total["tokens"],
          "tokens": total["tokens"], "start_rss_mb": start_rss,
          "peak_rss_mb": machine.peak_rss_mb()}


def main(_):
  if _WORKER.value == "save":
    save(_SAVED_MODEL.value)
    print(json.dumps({}))
    return
  if _WORKER.value:
    print(json.dumps(work(_WORKER.value, _BATCH.value, _DOC_BYTES.value, _SAVED_MODEL.value)))
    return
  unknown = [i for i in _IMPLS.value if i not in SETTINGS]
  if unknown:
    raise app.UsageError(f"--impls: unknown {', '.join(unknown)} (choose from "
                         f"{', '.join(SETTINGS)})")
  impls, left_out = machine.measurable_impls(_IMPLS.value, explicit=_IMPLS.present)
  batches = [int(b) for b in _BATCHES.value if b.isdigit() and int(b) > 0]
  if len(batches) != len(_BATCHES.value):
    raise app.UsageError(f"--batch_sizes={','.join(_BATCHES.value)}: want positive numbers")
  size = os.path.getsize(CORPUS)
  if (max(batches) + 1) * _DOC_BYTES.value > size:  # + 1: the warm-up's document
    raise app.UsageError(f"--batch_sizes={max(batches)} x --doc_bytes={_DOC_BYTES.value}: "
                         f"{CORPUS} has {size:,} bytes, fewer than {max(batches) + 1} "
                         "documents of that size")
  print(machine.describe())
  if left_out:
    print(left_out)
  saved_model = os.path.join(tempfile.mkdtemp(prefix="bench-eval-"), "saved_model")
  if "saved_model" in impls:  # written once, in a process of its own
    machine.run_worker(__file__, "--worker=save", f"--saved_model={saved_model}")
  results = {(i, b): [] for i in impls for b in batches}
  for round_index in range(_ROUNDS.value):
    for batch in batches:
      for impl in impls:
        result = machine.run_worker(__file__, f"--worker={impl}", f"--batch={batch}",
                                    f"--doc_bytes={_DOC_BYTES.value}",
                                    f"--saved_model={saved_model}")
        results[impl, batch].append(result)
        print(f"round {round_index + 1} batch {batch} {impl}: "
              f"{result['tokens_per_second']:,.0f} tokens/s, loss {result['loss']:.6f}, "
              f"peak RSS {result['peak_rss_mb']:,.0f} MB", flush=True)
  print(f"\n{machine.describe()} (after)")
  print(f"\nmodel: {reference.LAYERS}x LSTM {reference.UNITS}, embedding "
        f"{reference.EMBEDDING}; each row one document of "
        f"{_DOC_BYTES.value:,} bytes; {_ROUNDS.value} rounds, medians\n")
  med = lambda i, b: statistics.median(r["tokens_per_second"] for r in results[i, b])
  others = [i for i in impls if i != "saved_model"] if "saved_model" in impls else []
  header = ([f"{i} tokens/s" for i in impls] + [f"{i} / saved_model" for i in others] +
            [f"{i} loss" for i in impls] + [f"{i} peak RSS" for i in impls])
  print("| batch | " + " | ".join(header) + " |")
  print("|---:|" + "---:|" * len(header))
  for batch in batches:
    cells = ([f"{med(i, batch):,.0f}" for i in impls] +
             [f"{med(i, batch) / med('saved_model', batch):.2f}x" for i in others] +
             [f"{results[i, batch][0]['loss']:.6f}" for i in impls] +
             [f"{max(r['peak_rss_mb'] for r in results[i, batch]):,.0f} MB" for i in impls])
    print(f"| {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  app.run(main)
