"""run(config): score documents with an exported SavedModel, write a report.

Every document is one stream: its tokens are scored in order with the LSTM
state carried from the first to the last (the way published perplexities are
measured), the first token after the tokenizer's start id (a line end; the
SavedModel's `score` signature does the same). Documents are read in
line-aligned blocks and scored side by side, `batch_size` at a time, in
chunks of `chunk_tokens`; when one ends its row takes the next document with
a fresh state. Nothing holds a whole document in memory.

By default the numbers come from the SavedModel itself (its `tokenize` and
`score_tokens` functions), so they are the model's as anyone who loads the
export would get them. With `decode_ops="fused"` or `precision="bfloat16"`
the export's weights score in this process instead
(dataspec.serving.LanguageModel, the class the SavedModel was saved from,
with textgen-generate's compiled ops or bfloat16 products): the same
functions, faster, the numbers equal up to float rounding (fused float32)
or bfloat16's.
"""

import collections
import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Iterator, List, Optional

from absl import logging
import numpy as np
# Before TensorFlow: the job runs no Keras (17 MB less memory, see there).
from dataspec import lean_tensorflow  # pylint: disable=unused-import,g-bad-import-order
import tensorflow as tf

from dataspec import decode_ops as decode_ops_lib
from dataspec import export as export_lib
from dataspec import metadata as metadata_lib
from dataspec import paths
from dataspec import serving
from dataspec import storage
from dataspec import textfiles
from dataspec import tf_allocator

READ_BYTES = 1 << 20  # bytes read from a document at a time
MAX_LINE_BYTES = 16 << 20  # a longer line is cut at a character boundary
MAX_LOGITS_BYTES = 64 << 20  # one call's logits (batch, chunk, vocab) float32


@dataclasses.dataclass(frozen=True)
class Document:
  """A byte range [start, end) of a file to score whole, and the file's text
  encoding ("auto": detected when it is opened)."""
  path: str
  start: int
  end: int
  size: int
  encoding: str = textfiles.UTF8


class _Stream:
  """One document being scored: reads blocks, tokenizes, hands out ids."""

  def __init__(self, doc: Document, model, count_invalid: bool):
    self.doc = doc
    self._model = model
    self._count_invalid = count_invalid
    self._handle = storage.open_read(doc.path, start=doc.start)
    self._remaining = doc.end - doc.start
    self._pending = b""
    self._ids = collections.deque()
    self._buffered = 0
    self.stats = dict(bytes=0, tokens=0, nll=0.0, unknown_tokens=0, invalid_utf8=0)

  @property
  def finished(self) -> bool:
    return not self._buffered and self._remaining == 0 and not self._pending

  def close(self):
    self._handle.close()

  def _read_block(self):
    data = self._handle.read(min(READ_BYTES, self._remaining))
    if not data:
      raise IOError(f"{self.doc.path} ended at byte {self.doc.end - self._remaining}, "
                    f"before byte {self.doc.end}: the file changed while it was read")
    self._remaining -= len(data)
    if self._remaining == 0:
      block, self._pending = self._pending + data, b""
    else:
      block, self._pending = textfiles.cut_block(
          self._pending + data, force=len(self._pending) > MAX_LINE_BYTES)
    if not block:
      return
    if self.doc.encoding != textfiles.UTF8:
      block, invalid = textfiles.to_utf8(block, self.doc.encoding)
    elif self._count_invalid:
      invalid = textfiles.invalid_utf8(block)
    self.stats["bytes"] += len(block)  # of UTF-8 text: what bits per byte divide by
    if self._count_invalid:
      self.stats["invalid_utf8"] += invalid
    ids = self._model.tokenize(tf.constant([block])).flat_values.numpy()
    if len(ids):
      self._ids.append(ids)
      self._buffered += len(ids)

  def take(self, n: int) -> np.ndarray:
    """Up to n next ids (fewer only at the end of the document)."""
    while self._buffered < n and (self._remaining or self._pending):
      self._read_block()
    out, got = [], 0
    while self._ids and got < n:
      ids = self._ids.popleft()
      if got + len(ids) > n:
        self._ids.appendleft(ids[n - got:])
        ids = ids[:n - got]
      out.append(ids)
      got += len(ids)
    self._buffered -= got
    return np.concatenate(out) if out else np.zeros([0], np.int32)


def _file_result(doc: Document, stats: dict, whole: bool) -> dict:
  out = {"path": doc.path}
  if not whole:
    out.update(start=doc.start, end=doc.end)
  return dict(out, **_summary(stats))


def _summary(stats: dict) -> dict:
  """Loss, perplexity and bits per byte of summed stats (None where no
  token or byte was scored: JSON has no NaN)."""
  tokens, nll, num_bytes = stats["tokens"], stats["nll"], stats["bytes"]
  loss = nll / tokens if tokens else None
  return {
      "bytes": num_bytes, "tokens": tokens, "nll": nll, "loss": loss,
      "perplexity": math.exp(min(loss, 700)) if tokens else None,
      "bits_per_byte": nll / math.log(2) / num_bytes if tokens and num_bytes else None,
      "unknown_tokens": stats["unknown_tokens"], "invalid_utf8": stats["invalid_utf8"],
  }


def documents_from_inputs(patterns, encoding: str = textfiles.UTF8) -> List[Document]:
  """Every file the --input patterns name, whole, in `encoding`.

  Raises:
    FileNotFoundError: a pattern matched nothing.
  """
  docs, seen = [], set()
  for pattern in patterns:
    matched = storage.match(pattern.rstrip("/") if pattern != "/" else pattern)
    if not matched:
      raise FileNotFoundError(f"--input={pattern} matched no files")
    for path in matched:
      if path not in seen:
        seen.add(path)
        size = storage.size(path)
        docs.append(Document(path, 0, size, size, encoding))
  return docs


def documents_from_dataset(dataset_dir: str, split: str) -> List[Document]:
  """The documents of a held-out split, as preprocessing recorded them.

  Raises:
    ValueError: the dataset has no such split or no document list.
    FileNotFoundError / ValueError: a source file is gone or changed size.
  """
  meta = metadata_lib.load_dataset_metadata(dataset_dir)
  stats = meta.splits.get(split)
  if stats is None:
    raise ValueError(f"--dataset_dir={dataset_dir} has no {split} split "
                     f"(it has {', '.join(sorted(meta.splits))})")
  if not stats.documents_file:
    raise ValueError(
        f"--dataset_dir={dataset_dir}: its {split} split has no document list "
        "(written by preprocessing since this version): re-run textgen-preprocess, "
        "or score the files with --input")
  docs = []
  path = storage.join(dataset_dir, stats.documents_file)
  for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
    record = json.loads(line)
    if not storage.exists(record["path"]):
      raise FileNotFoundError(
          f"{path} line {number}: the source file {record['path']} is gone; "
          "score a copy with --input")
    now = storage.size(record["path"])
    if now != record["size"]:
      raise ValueError(
          f"{path} line {number}: {record['path']} has {now} bytes, "
          f"{record['size']} when it was preprocessed: it changed since")
    docs.append(Document(record["path"], record["start"], record["end"], record["size"],
                         record.get("encoding", textfiles.UTF8)))
  return docs


def load_saved_model(export_dir: str, *, given: str):
  """tf.saved_model.load of export_dir/saved_model (copied locally first if
  it is on gs://, whose TensorFlow reader takes no emulator).

  Raises:
    IncompleteExportError: no complete export.
    ValueError: an export without a SavedModel (written before it existed).
  """
  export_lib.check_complete(export_dir, flag="model_dir", given=given)
  ep = paths.ExportPaths(export_dir)
  pb = storage.join(ep.saved_model, "saved_model.pb")
  if not storage.exists(pb):
    raise ValueError(
        f"--model_dir={given}: the export at {export_dir} has no saved_model/ "
        "(it was written by an older version). Re-export it from its "
        "checkpoints: textgen-train --dataset_dir=<its dataset> "
        f"--model_dir=<the training model_dir> --export_only")
  # bpe/unigram exports tokenize with tensorflow-text's SentencePiece op,
  # which importing the package registers. Only those: the package imports
  # Keras (see dataspec.lean_tensorflow).
  meta = metadata_lib.DatasetMetadata.from_json(storage.read_text(ep.metadata))
  if meta.tokenizer_spec.is_subword:
    import tensorflow_text  # pylint: disable=g-import-not-at-top,unused-import
  if not storage.is_gcs(export_dir):
    return tf.saved_model.load(ep.saved_model)
  local = tempfile.mkdtemp(prefix="textgen-saved-model-")
  for path in storage.list_dir(ep.saved_model):
    rel = path[len(ep.saved_model):].lstrip("/")
    storage.download_file(path, os.path.join(local, rel))
  return tf.saved_model.load(local)


def load_model(export_dir: str, config):
  """What scores: the SavedModel (config.saved_model_scores), else the
  export's weights as a LanguageModel with config's precision and
  decode_ops (whose tokenize, score_tokens and info are the functions the
  SavedModel was saved with)."""
  if config.saved_model_scores:
    return load_saved_model(export_dir, given=config.model_dir)
  spec, weights, meta, vocab, _ = export_lib.load_export(export_dir)
  return serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab,
                               precision=config.precision, decode_ops=config.decode_ops)


def _open_next(docs: Iterator[Document], model, count_invalid, skipped):
  """The next document that is neither empty nor binary, opened; or None."""
  for doc in docs:
    if doc.end <= doc.start:
      skipped.append({"path": doc.path, "reason": "empty"})
      logging.warning("Skipping empty file %s", doc.path)
      continue
    with storage.open_read(doc.path, start=doc.start) as f:
      head = f.read(min(textfiles.head_bytes(doc.encoding), doc.end - doc.start))
    encoding = textfiles.text_encoding(head, doc.encoding)
    if encoding is None:
      skipped.append({"path": doc.path, "reason": "binary"})
      logging.warning("Skipping %s: %s", doc.path, textfiles.describe_binary(doc.encoding))
      continue
    return _Stream(dataclasses.replace(doc, encoding=encoding), model, count_invalid)
  return None


def score_documents(model, docs: List[Document], *, batch_size: int, chunk_tokens: int,
                    progress_seconds: float):
  """Scores `docs` with a loaded SavedModel or a LanguageModel (load_model).

  Returns:
    (per-file results, skipped files, total stats, seconds).
  """
  info = json.loads(model.info().numpy())
  spec = info["model"]
  start_id = info["start_id"]
  count_invalid = info["tokenizer"]["type"] != "byte"
  layers, units, vocab = spec["num_layers"], spec["units"], spec["vocab_size"]
  chunk = max(16, min(chunk_tokens, MAX_LOGITS_BYTES // (4 * batch_size * vocab)))
  total_bytes = sum(d.end - d.start for d in docs)
  whole = all(d.start == 0 and d.end == d.size for d in docs)
  pending = iter(docs)
  rows: List[Optional[_Stream]] = [None] * batch_size
  h = np.zeros([layers, batch_size, units], np.float32)
  c = np.zeros_like(h)
  prev = np.zeros([batch_size], np.int32)
  results, skipped = [], []
  total = dict(bytes=0, tokens=0, nll=0.0, unknown_tokens=0, invalid_utf8=0)
  start_time = last_log = time.time()

  def finish(row):
    stream = rows[row]
    stream.close()
    results.append(_file_result(stream.doc, stream.stats, whole))
    for k in total:
      total[k] += stream.stats[k]
    rows[row] = None

  while True:
    for row in range(batch_size):
      while rows[row] is None or rows[row].finished:
        if rows[row] is not None:
          finish(row)
        stream = _open_next(pending, model, count_invalid, skipped)
        if stream is None:
          break
        rows[row] = stream
        h[:, row] = 0.0
        c[:, row] = 0.0
        if start_id is not None:
          prev[row] = start_id
        else:  # the first token is context only
          first = stream.take(1)
          prev[row] = first[0] if len(first) else 0
    if all(r is None for r in rows):
      break
    ids = np.zeros([batch_size, chunk], np.int32)
    lengths = np.zeros([batch_size], np.int32)
    for row, stream in enumerate(rows):
      if stream is not None:
        taken = stream.take(chunk)
        ids[row, :len(taken)] = taken
        lengths[row] = len(taken)
    out = model.score_tokens(prev_ids=tf.constant(prev), token_ids=tf.constant(ids),
                             lengths=tf.constant(lengths), h=tf.constant(h),
                             c=tf.constant(c))
    nll, unknown = out["nll"].numpy(), out["unknown_tokens"].numpy()
    h, c, prev = out["h"].numpy(), out["c"].numpy(), out["last_ids"].numpy()
    for row, stream in enumerate(rows):
      if stream is not None:
        stream.stats["tokens"] += int(lengths[row])
        stream.stats["nll"] += float(nll[row])
        stream.stats["unknown_tokens"] += int(unknown[row])
    if time.time() - last_log >= progress_seconds:
      last_log = time.time()
      done_bytes = total["bytes"] + sum(r.stats["bytes"] for r in rows if r)
      tokens = total["tokens"] + sum(r.stats["tokens"] for r in rows if r)
      nll_sum = total["nll"] + sum(r.stats["nll"] for r in rows if r)
      logging.info("%d of %d files done, %.1f of %.1f MB read; %s tokens, loss %.4f; "
                   "%s tokens/s", len(results), len(docs), done_bytes / 1e6,
                   total_bytes / 1e6, f"{tokens:,}", nll_sum / max(tokens, 1),
                   f"{tokens / (last_log - start_time):,.0f}")
  return results, skipped, total, time.time() - start_time


def run(config) -> dict:
  """Scores the documents of `config` and writes the report; returns it."""
  tf_allocator.use_bfc_allocator()  # before any op
  if config.decode_ops == "fused":
    decode_ops_lib.use_one_inter_op_thread()  # before any op too
  logging.info("The config:\n%s", json.dumps(config.to_json_dict(), indent=2))
  storage.check_bucket(config.model_dir)
  export_dir = export_lib.find_export(config.model_dir)
  # Every check before any work: the export, the documents, the output.
  export_lib.check_complete(export_dir, flag="model_dir", given=config.model_dir)
  gpus = tf.config.list_physical_devices("GPU")
  if config.decode_ops == "fused" and gpus:
    raise ValueError(f"--decode_ops=fused scores on the CPU; this machine has {len(gpus)} "
                     "GPU(s), which the default --decode_ops=tensorflow uses")
  if config.input:
    docs = documents_from_inputs(config.input, config.input_encoding)
    source = {"input": list(config.input)}
  else:
    docs = documents_from_dataset(config.dataset_dir, config.split)
    source = {"dataset_dir": config.dataset_dir, "split": config.split}
  if storage.is_gcs(config.output):
    storage.check_bucket(config.output)
  else:
    if os.path.isdir(config.output):
      raise IsADirectoryError(f"--output={config.output} is a directory; name a "
                              "JSON file")
    storage.check_writable(os.path.dirname(os.path.abspath(config.output)))
  model = load_model(export_dir, config)
  training = json.loads(storage.read_text(paths.ExportPaths(export_dir).training))
  logging.info("Scoring %d document(s), %.1f MB, with %s (%s)", len(docs),
               sum(d.end - d.start for d in docs) / 1e6, export_dir,
               "its SavedModel" if config.saved_model_scores else
               f"its weights, --precision={config.precision} "
               f"--decode_ops={config.decode_ops}")
  results, skipped, total, seconds = score_documents(
      model, docs, batch_size=config.batch_size, chunk_tokens=config.chunk_tokens,
      progress_seconds=config.progress_seconds)
  summary = _summary(total)
  report = {
      "model_dir": config.model_dir,
      "export_dir": export_dir,
      "exported_step": training.get("exported_step", training.get("step")),
      "tokenizer": json.loads(model.info().numpy())["tokenizer"],
      "source": source,
      "total": dict(summary, files=len(results), skipped_files=len(skipped)),
      "files": results,
      "skipped_files": skipped,
      "seconds": seconds,
      "tokens_per_second": total["tokens"] / max(seconds, 1e-9),
      "bytes_per_second": total["bytes"] / max(seconds, 1e-9),
      "scored_by": "saved_model" if config.saved_model_scores else "weights",
      "config": config.to_json_dict(),
  }
  storage.write_text(config.output, json.dumps(report, indent=2) + "\n")
  if summary["loss"] is None:
    logging.warning("No token was scored (%d file(s), %d skipped)", len(results),
                    len(skipped))
  else:
    logging.info("%d file(s), %s tokens: loss %.4f nats/token, perplexity %.2f, "
                 "%.4f bits/byte, %d unknown; %s tokens/s. Report: %s",
                 len(results), f"{total['tokens']:,}", summary["loss"],
                 summary["perplexity"], summary["bits_per_byte"],
                 total["unknown_tokens"], f"{report['tokens_per_second']:,.0f}",
                 config.output)
  if skipped:
    logging.warning("Skipped %d file(s): %s", len(skipped),
                    ", ".join(f"{s['path']} ({s['reason']})" for s in skipped))
  tf_allocator.log_peak()
  return report
