"""run(config): load the export, read prompts, decode in batches, write JSONL."""

import dataclasses
import json
import os
import tempfile
import time
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from dataspec import export as export_lib
from dataspec import paths
from dataspec import storage
from dataspec import tokenizer as tokenizer_lib
from generate import sampling

CHUNK_STEPS = 32  # tokens decoded per graph call between stop-string checks


@dataclasses.dataclass
class Prompt:
  index: int  # position in the prompts file (sharding and seeds use it)
  id: str
  text: str


def find_export(model_dir: str) -> str:
  """model_dir/export, or model_dir itself when it is an export."""
  if storage.exists(paths.ExportPaths(model_dir).completed):
    return model_dir
  return paths.RunPaths(model_dir).export.root


def read_prompts(config) -> List[Prompt]:
  """Reads --prompt or --prompts (text lines or JSONL).

  Raises:
    ValueError: the file is not UTF-8, has a bad JSON record or no prompts.
  """
  if config.prompt is not None:
    return [Prompt(0, "0", config.prompt)]
  if not storage.exists(config.prompts):
    raise FileNotFoundError(f"--prompts={config.prompts} does not exist")
  raw = storage.read_bytes(config.prompts)
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as err:
    line = raw[:err.start].count(b"\n") + 1
    raise ValueError(f"--prompts={config.prompts} is not UTF-8 (line {line}, "
                     f"byte {err.start})") from err
  lines = text.splitlines()
  is_jsonl = any(l.strip() for l in lines) and next(
      l for l in lines if l.strip()).lstrip().startswith("{")
  prompts = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    if is_jsonl:
      try:
        record = json.loads(line)
        prompt_text = record["prompt"]
      except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"--prompts={config.prompts} line {number}: expected "
                         f'{{"id": ..., "prompt": "..."}}, got {line[:80]!r}') from err
      if not isinstance(prompt_text, str) or not prompt_text:
        raise ValueError(f"--prompts={config.prompts} line {number}: empty prompt")
      prompt_id = str(record.get("id", number))
    else:
      prompt_text, prompt_id = line, str(number)
    prompts.append(Prompt(len(prompts), prompt_id, prompt_text))
  if not prompts:
    raise ValueError(f"--prompts={config.prompts} holds no prompts")
  return prompts


def shard_output_path(config) -> str:
  if config.num_shards == 1:
    return config.output
  stem, ext = os.path.splitext(config.output)
  return f"{stem}-{config.shard_index:05d}-of-{config.num_shards:05d}{ext or '.jsonl'}"


class Generator:
  """Decodes batches of (prompt, sample index) with an exported model."""

  def __init__(self, export_dir: str, config):
    self.config = config
    spec, weights, meta, vocab, training = export_lib.load_export(export_dir)
    self.tokenizer = tokenizer_lib.Tokenizer(meta.tokenizer_spec, vocab=vocab)
    self.decoder = sampling.Decoder(spec, weights)
    self.training = training
    self.stop_token = None
    self.stop_strings = []
    for s in config.stop:
      if s == "<eos>":
        self.stop_token = tokenizer_lib.EOS_ID
      else:
        self.stop_strings.append(s)

  def encode_prompt(self, text: str):
    ids = self.tokenizer.encode(text)
    unknown = 0 if self.tokenizer.spec.type == "byte" else int(
        np.count_nonzero(ids == tokenizer_lib.UNK_ID))
    if not len(ids):  # e.g. a word prompt of only punctuation under "strip"
      ids = np.array([tokenizer_lib.EOS_ID], dtype=np.int32)
    return ids, unknown

  def generate_batch(self, items):
    """items: list of (Prompt, sample_index). Returns result dicts."""
    config = self.config
    encoded = [self.encode_prompt(p.text) for p, _ in items]
    lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int32)
    tokens = np.zeros((len(items), lengths.max()), dtype=np.int32)
    for row, (ids, _) in enumerate(encoded):
      tokens[row, :len(ids)] = ids
    states, logits = self.decoder.prefill(tf.constant(tokens), tf.constant(lengths))
    seeds = tf.constant([sampling.row_seed(config.seed, p.index, s) for p, s in items],
                        dtype=tf.int64)
    generated = np.zeros((len(items), 0), dtype=np.int32)
    done = np.zeros(len(items), dtype=bool)
    reasons = ["length"] * len(items)
    ends = [config.max_new_tokens] * len(items)
    while generated.shape[1] < config.max_new_tokens and not done.all():
      n = min(CHUNK_STEPS, config.max_new_tokens - generated.shape[1])
      new, states, logits = self.decoder.decode(
          states, logits, row_seeds=seeds, start=tf.constant(generated.shape[1]),
          num_steps=tf.constant(n), temperature=tf.constant(config.temperature),
          top_k=tf.constant(config.top_k), top_p=tf.constant(config.top_p),
          greedy=tf.constant(config.greedy))
      generated = np.concatenate([generated, new.numpy()], axis=1)
      for row in np.flatnonzero(~done):
        end = self._stop_position(generated[row])
        if end is not None:
          done[row], ends[row] = True, end[0]
          reasons[row] = end[1]
    results = []
    for row, (prompt, sample_index) in enumerate(items):
      ids = generated[row, :ends[row]]
      text = self.tokenizer.decode(ids)
      if reasons[row] == "stop":
        text = self._cut_at_stop_string(text)
      results.append({
          "id": prompt.id, "prompt": prompt.text, "sample_index": sample_index,
          "text": text, "num_tokens": int(len(ids)), "finish_reason": reasons[row],
          "unknown_prompt_tokens": encoded[row][1],
          "settings": config.settings()})
    return results

  def _stop_position(self, ids):
    """(end, reason) if the sample is finished within `ids`, else None."""
    if self.stop_token is not None:
      hits = np.flatnonzero(ids == self.stop_token)
      if len(hits):
        return int(hits[0]), "stop"
    if self.stop_strings:
      text = self.tokenizer.decode(ids)
      if any(s in text for s in self.stop_strings):
        return len(ids), "stop"
    return None

  def _cut_at_stop_string(self, text: str) -> str:
    cuts = [text.index(s) for s in self.stop_strings if s in text]
    return text[:min(cuts)] if cuts else text


def run(config) -> Optional[str]:
  """Generates this shard's samples; returns the output path."""
  logging.info("The config:\n%s", json.dumps(config.to_json_dict(), indent=2))
  storage.check_bucket(config.model_dir)
  export_dir = find_export(config.model_dir)
  output = shard_output_path(config)
  # Every check before any work: export, prompts, output location.
  if not storage.exists(paths.ExportPaths(export_dir).completed):
    raise export_lib.IncompleteExportError(
        f"--model_dir={config.model_dir}: no complete export at {export_dir} "
        "(EXPORTED marker missing). Finish training or run textgen-train --export_only.")
  prompts = read_prompts(config)
  storage.check_writable(storage.dirname(output) or ".")
  if storage.exists(output) and not config.overwrite:
    logging.info("%s is already complete; skipping this shard (--overwrite to redo)", output)
    return output
  generator = Generator(export_dir, config)
  mine = [p for p in prompts if p.index % config.num_shards == config.shard_index]
  items = [(p, s) for p in mine for s in range(config.num_samples)]
  logging.info("Shard %d/%d: %d of %d prompts, %d samples -> %s", config.shard_index,
               config.num_shards, len(mine), len(prompts), len(items), output)
  lines, tokens, start = [], 0, time.time()
  for begin in range(0, len(items), config.batch_size):
    for result in generator.generate_batch(items[begin:begin + config.batch_size]):
      lines.append(json.dumps(result, ensure_ascii=False))
      tokens += result["num_tokens"]
    elapsed = time.time() - start
    logging.info("%d/%d samples, %s tokens/s", len(lines), len(items),
                 f"{tokens / max(elapsed, 1e-9):,.0f}")
  # Written in one piece (temp file + rename, or one object upload): a
  # reader never sees a partial output, and a rerun skips a complete one.
  if storage.is_gcs(output):
    storage.write_text(output, "".join(l + "\n" for l in lines))
  else:
    directory = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(output))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.writelines(l + "\n" for l in lines)
    os.replace(tmp, output)
  logging.info("Wrote %d samples to %s", len(lines), output)
  return output
