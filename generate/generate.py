"""run(config): load the export, read prompts, decode in batches, write JSONL."""

import dataclasses
import json
import os
import tempfile
import time
from typing import List, Optional

from absl import logging
# Before TensorFlow: the job runs no Keras (17 MB less memory, see there).
from dataspec import lean_tensorflow  # pylint: disable=unused-import,g-bad-import-order
import tensorflow as tf

from dataspec import decode_ops as decode_ops_lib
from dataspec import export as export_lib
from dataspec import serving
from dataspec import storage
from dataspec import tf_allocator
from dataspec import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Prompt:
  index: int  # position in the prompts file (sharding and seeds use it)
  id: str
  text: str


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
      try:
        prompt_text.encode("utf-8")
      except UnicodeEncodeError as err:  # a lone surrogate escaped in JSON
        raise ValueError(f"--prompts={config.prompts} line {number}: the prompt "
                         f"is not valid Unicode ({err.reason})") from err
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
  """Decodes batches of (prompt, sample index) with an exported model.

  The decoding itself is dataspec.serving.LanguageModel.sampler: the
  function the exported SavedModel's `generate` signature runs, with this
  job's settings fixed (so only their decoding loop is traced); this job and
  the SavedModel give the same text for the same settings (with
  --precision=float32 and --decode_ops=tensorflow, the defaults).
  """

  def __init__(self, export_dir: str, config):
    self.config = config
    spec, weights, meta, vocab, training = export_lib.load_export(export_dir)
    self.model = serving.LanguageModel(spec, weights, meta.tokenizer_spec, vocab,
                                       precision=config.precision,
                                       decode_ops=config.decode_ops)
    self.training = training
    # The prompts are normalized here, in Python (the same function the
    # graph's normalization is tested against), so the traced function
    # holds none: 15 MB less peak memory at batch 1 (LanguageModel.sampler).
    self._generate = self.model.sampler(
        temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
        greedy=config.greedy, seed=config.seed, stop=config.stop, normalized_prompts=True)
    self._max_new_tokens = tf.constant(config.max_new_tokens, tf.int32)

  def generate_batch(self, items):
    """items: list of (Prompt, sample_index). Returns result dicts."""
    out = self._generate(
        tf.constant([tokenizer_lib.encoding_text(p.text, self.model.tokenizer.spec)
                     for p, _ in items]),
        tf.constant([p.index for p, _ in items], tf.int64),
        tf.constant([s for _, s in items], tf.int64), self._max_new_tokens)
    out = {k: v.numpy() for k, v in out.items()}
    return [{
        "id": prompt.id, "prompt": prompt.text, "sample_index": sample_index,
        "text": out["text"][row].decode("utf-8"),
        "num_tokens": int(out["num_tokens"][row]),
        "finish_reason": out["finish_reason"][row].decode("ascii"),
        "unknown_prompt_tokens": int(out["unknown_prompt_tokens"][row]),
        "settings": self.config.settings(),
    } for row, (prompt, sample_index) in enumerate(items)]


def run(config) -> Optional[str]:
  """Generates this shard's samples; returns the output path."""
  tf_allocator.use_bfc_allocator()  # before any op
  if config.decode_ops == "fused":
    decode_ops_lib.use_one_inter_op_thread()  # before any op too
  logging.info("The config:\n%s", json.dumps(config.to_json_dict(), indent=2))
  storage.check_bucket(config.model_dir)
  export_dir = export_lib.find_export(config.model_dir)
  output = shard_output_path(config)
  # Every check before any work: export, prompts, output location.
  export_lib.check_complete(export_dir, flag="model_dir", given=config.model_dir)
  prompts = read_prompts(config)
  storage.check_writable(storage.dirname(output) or ".")
  gpus = tf.config.list_physical_devices("GPU")
  if config.decode_ops == "fused" and gpus:
    raise ValueError(f"--decode_ops=fused decodes on the CPU; this machine has {len(gpus)} "
                     "GPU(s), which the default --decode_ops=tensorflow uses")
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
  tf_allocator.log_peak()
  return output
