"""build_pipeline(): the preprocessing graph, and run(): checks + run + report.

  files --Sniff--> text files --Plan--> chunks --Reshuffle-->
     +--BuildVocab (train chunks, counts summed across workers)--> vocab
     +--Encode (vocab side input)--> train blobs, validation blobs, stats
  blobs --WriteShards--> train-*.tfrecord.gz, validation-*.tfrecord.gz
  Finalize (after all of the above): vocab.txt, config.json, metadata.json,
  then COMPLETED last.
"""

import dataclasses
import json
import os
from typing import Dict, List, Sequence

from absl import logging
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_preprocess import config as config_lib
from beam_preprocess import inputs
from beam_preprocess import transforms
from dataspec import SCHEMA_VERSION
from dataspec import metadata as metadata_lib
from dataspec import paths
from dataspec import schema
from dataspec import storage
from dataspec import tokenizer as tokenizer_lib
from dataspec import vocab as vocab_lib

# Files a previous run may have left in output_dir; only these are removed.
_OUTPUT_PATTERNS = ("train-*.tfrecord*", "validation-*.tfrecord*",
                    "test-*.tfrecord*", "*-documents.jsonl",
                    "vocab.txt", "tokenizer.model", "metadata.json", "config.json")


# Up to this many documents, a hash split is checked without the binary files
# (reading each file's head in this process) before the pipeline starts.
MAX_FILES_SNIFFED_UP_FRONT = 1000


def skipped_summary(skipped: Sequence[dict], total_bytes: int) -> str:
  """The end-of-run line about binary inputs ("" if none were skipped)."""
  binary = sorted((s for s in skipped if s.get("reason") == "binary"),
                  key=lambda s: -s.get("bytes", 0))
  if not binary:
    return ""
  size = sum(s.get("bytes", 0) for s in binary)
  names = ", ".join(s["path"] for s in binary[:3]) + (", ..." if len(binary) > 3 else "")
  return (f"Skipped {len(binary)} binary file(s), {size:,} bytes = "
          f"{100 * size / max(total_bytes, 1):.1f}% of the input, not trained on "
          f"(largest: {names}; all in metadata.json skipped_files). A text file "
          "in another encoding is not binary: pass --input_encoding")


def check_inputs(config: config_lib.PreprocessConfig):
  """Matches --input and rejects corpora that cannot give a dataset.

  Returns:
    (files, skipped) as from inputs.match_inputs.
  """
  files, skipped = inputs.match_inputs(config.input)
  for split, patterns in (("validation", config.validation_input),
                          ("test", config.test_input)):
    if patterns:
      fixed, fixed_skipped = inputs.match_inputs(patterns)
      files += [dataclasses.replace(f, split=split) for f in fixed]
      skipped += fixed_skipped
  longest = max(f.size for f in files)
  if longest < config.window_length + 1:
    raise ValueError(
        f"--window_length={config.window_length} is longer than every "
        f"document (the largest input has {longest} bytes, so fewer than "
        f"{config.window_length + 1} tokens)")
  if config.split_mode == "hash" and config.validation_fraction > 0:
    free = [f for f in files if not f.split]
    if len(free) <= MAX_FILES_SNIFFED_UP_FRONT:
      # Binary files are skipped later, in the pipeline: count without them.
      free = [f for f in free
              if transforms.file_encoding(f.path, config.input_encoding) is not None]
    num_val = sum(inputs.hash_fraction(f.document_id) < config.validation_fraction
                  for f in free)
    if num_val == 0 or num_val == len(free):
      which = "validation" if num_val == 0 else "train"
      raise ValueError(
          f"--split_mode=hash with --validation_fraction="
          f"{config.validation_fraction} leaves the {which} split empty: "
          f"{len(free)} document(s) are split whole by a hash of their name. "
          "Use --split_mode=tail to split every document by position, or "
          "--validation_fraction=0.")
  return files, skipped


def prepare_output_dir(config: config_lib.PreprocessConfig):
  """Refuses a complete dataset unless --overwrite; clears our old files.

  COMPLETED is deleted first, so a run killed from here on leaves a directory
  that no reader accepts.
  """
  dp = paths.DatasetPaths(config.output_dir)
  storage.check_writable(config.output_dir)
  if metadata_lib.is_complete(config.output_dir):
    if not config.overwrite:
      raise FileExistsError(
          f"--output_dir={config.output_dir} already holds a complete dataset;"
          " pass --overwrite to replace it")
    logging.warning("Overwriting the dataset in %s", config.output_dir)
  storage.delete(dp.completed)
  for pattern in _OUTPUT_PATTERNS:
    for path in storage.glob(storage.join(config.output_dir, pattern)):
      logging.info("Removing %s from an earlier run", path)
      storage.delete(path)


def write_documents(config: config_lib.PreprocessConfig, ranges: Sequence[dict]) -> Dict[str, str]:
  """Writes <split>-documents.jsonl for each held-out split: one line per
  document, {"path", "document_id", "start", "end", "size", "encoding"}, the
  byte range of the document that is in the split and the file's text
  encoding. Returns {split: file name}."""
  by_split = {}
  for r in ranges:
    key = (r["split"], r["path"])
    merged = by_split.setdefault(r["split"], {}).setdefault(key, dict(r))
    merged["start"] = min(merged["start"], r["start"])
    merged["end"] = max(merged["end"], r["end"])
  names = {}
  for split, documents in by_split.items():
    dp = paths.DatasetPaths(config.output_dir)
    lines = [json.dumps({k: d[k] for k in ("path", "document_id", "start", "end", "size",
                                           "encoding")}, sort_keys=True)
             for _, d in sorted(documents.items())]
    storage.write_text(dp.documents(split), "".join(l + "\n" for l in lines))
    names[split] = storage.basename(dp.documents(split))
  return names


def finalize(_, *, config: config_lib.PreprocessConfig, vocab,
             stats: Dict[str, Dict[str, int]], files: Dict[str, List[str]],
             skipped: List[dict], ranges: Sequence[dict] = ()):
  """Writes vocab.txt (or tokenizer.model), the held-out splits' document
  lists, config.json, metadata.json and, last, COMPLETED.

  `vocab` is Tokenizer's vocab argument (tokens, model bytes or None).

  Raises:
    ValueError: a split that should have windows has none (no COMPLETED).
  """
  spec = config.tokenizer
  vocab_size = tokenizer_lib.Tokenizer(spec, vocab=vocab).vocab_size
  splits = {}
  for split in ("train", "validation") + tuple(x for x in config.splits if x == "test"):
    s = stats.get(split, dict.fromkeys(transforms.STATS_KEYS, 0))
    names = sorted(storage.basename(f) for f in files.get(split, []))
    splits[split] = metadata_lib.SplitStats(**s, shards=len(names), files=names)
  if splits["train"].windows == 0:
    raise ValueError(
        f"No training windows: --window_length={config.window_length} is "
        "longer than every training document (or chunk)")
  if ("validation" in config.splits and config.split_mode == "hash"
      and splits["validation"].documents == 0):
    binary = sum(s.get("reason") == "binary" for s in skipped)
    raise ValueError(
        f"No validation windows: no document hashed into the validation split "
        f"(--split_mode=hash, --validation_fraction={config.validation_fraction}; "
        f"{splits['train'].documents} document(s) remained"
        + (f" after {binary} binary file(s) were skipped" if binary else "") +
        "). Use --split_mode=tail, a larger --validation_fraction or "
        "--validation_input")
  if "validation" in config.splits and splits["validation"].windows == 0:
    raise ValueError(
        f"No validation windows: the validation part of the corpus is shorter "
        f"than --window_length={config.window_length}; raise "
        "--validation_fraction or lower --window_length")
  for split, name in write_documents(config, ranges).items():
    splits[split].documents_file = name
  dp = paths.DatasetPaths(config.output_dir)
  vocab_lib.write_for(dp, spec, vocab)
  fingerprint = vocab_lib.fingerprint_for(spec, vocab)
  storage.write_text(dp.config, json.dumps(config.to_json_dict(), indent=2) + "\n")
  metadata = metadata_lib.DatasetMetadata(
      schema_version=SCHEMA_VERSION,
      tokenizer=spec.to_json_dict(),
      vocab_size=vocab_size,
      vocab_fingerprint=fingerprint,
      token_dtype=schema.token_dtype_for(vocab_size),
      window_length=config.window_length,
      stride=config.stride,
      compression=config.compression,
      split_mode=config.split_mode,
      validation_fraction=config.validation_fraction,
      splits=splits,
      skipped_files=sorted(skipped, key=lambda s: s["path"]),
      inputs=list(config.input))
  metadata_lib.write_dataset_metadata(config.output_dir, metadata)


def build_pipeline(p: beam.Pipeline, *, config: config_lib.PreprocessConfig,
                   files: Sequence[inputs.InputFile], skipped: Sequence[dict]):
  """Adds the preprocessing steps to pipeline `p`."""
  sniffed = (p
             | "Files" >> beam.Create(list(files))
             | "Sniff" >> beam.ParDo(transforms.SniffFiles(
                 encoding=config.input_encoding)).with_outputs(
                 transforms.SniffFiles.SKIPPED, main="text"))
  chunks = (sniffed.text
            | "Plan" >> beam.FlatMap(lambda f: inputs.plan_chunks(
                [f], split_mode=config.split_mode,
                validation_fraction=config.validation_fraction,
                chunk_bytes=config.chunk_bytes))
            | "Reshuffle" >> beam.Reshuffle())
  vocab = chunks | "BuildVocab" >> transforms.BuildVocab(
      spec=config.tokenizer, max_vocab_size=config.max_vocab_size,
      min_count=config.min_count, character_coverage=config.character_coverage,
      unigram_sample_mb=config.unigram_sample_mb)
  encoded = chunks | "Encode" >> beam.ParDo(
      transforms.EncodeChunk(spec=config.tokenizer,
                             window_length=config.window_length,
                             stride=config.stride, seed=config.seed),
      vocab_text=beam.pvalue.AsSingleton(vocab)).with_outputs(
          transforms.EncodeChunk.STATS, transforms.EncodeChunk.RANGES, *paths.SPLITS)
  stats = (encoded[transforms.EncodeChunk.STATS]
           | "SumStats" >> beam.CombinePerKey(transforms.sum_stats))
  written = {}
  for split in config.splits:
    written[split] = encoded[split] | f"Write_{split}" >> transforms.WriteShards(
        file_path_prefix=paths.DatasetPaths(config.output_dir).shard_prefix(split),
        num_shards=config.num_shards, compression=config.compression)
  skipped_all = ((sniffed[transforms.SniffFiles.SKIPPED],
                  p | "EmptyFiles" >> beam.Create(list(skipped)))
                 | "AllSkipped" >> beam.Flatten())
  side_files = {f"files_{s}": beam.pvalue.AsList(pc) for s, pc in written.items()}

  def _finalize(x, *, vocab_text, stats, skipped, ranges, **files_by_name):
    files_by_split = {k[len("files_"):]: v for k, v in files_by_name.items()}
    vocab = transforms.parse_vocab(config.tokenizer, vocab_text)
    finalize(x, config=config, vocab=vocab, stats=stats, files=files_by_split,
             skipped=skipped, ranges=ranges)

  _ = (p
       | "Start" >> beam.Create([None])
       | "Finalize" >> beam.Map(_finalize, vocab_text=beam.pvalue.AsSingleton(vocab),
                                stats=beam.pvalue.AsDict(stats),
                                skipped=beam.pvalue.AsList(skipped_all),
                                ranges=beam.pvalue.AsList(
                                    encoded[transforms.EncodeChunk.RANGES]),
                                **side_files))


def choose_runner(options: PipelineOptions):
  """The runner named by --runner; for DirectRunner, its FnApiRunner engine.

  Beam's DirectRunner first tries to download and start the Prism runner,
  which needs network access and adds seconds; the FnApiRunner it falls back
  to is the same batch engine and honours --direct_num_workers and
  --direct_running_mode.
  """
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=g-import-not-at-top
  runner = options.view_as(StandardOptions).runner
  if runner in (None, "DirectRunner", "direct"):
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner  # pylint: disable=g-import-not-at-top
    return FnApiRunner()
  return None  # beam.Pipeline resolves the name from the options


def direct_runner_defaults(pipeline_args: Sequence[str]) -> List[str]:
  """`pipeline_args` plus, for DirectRunner, one worker thread per CPU.

  Beam's own default is a single in-process worker. Threads rather than
  processes: the heavy steps (numpy tokenizing, zlib, file I/O) release the
  GIL, and worker processes add ~4 s of start-up per run (27 MB of word text:
  4.6 MB/s with 2 threads, 2.7 MB/s with 2 processes; char 7.7 vs 3.6; see
  bench/bench_preprocess.py). Explicit --direct_num_workers or
  --direct_running_mode win.
  """
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=g-import-not-at-top
  args = list(pipeline_args)
  runner = PipelineOptions(args).view_as(StandardOptions).runner
  named = any(a.startswith(("--direct_num_workers", "--direct_running_mode"))
              for a in args)
  if runner in (None, "DirectRunner", "direct") and not named:
    args += [f"--direct_num_workers={os.cpu_count() or 1}",
             "--direct_running_mode=multi_threading"]
  return args


def run(config: config_lib.PreprocessConfig, *,
        pipeline_args: Sequence[str] = ()) -> metadata_lib.DatasetMetadata:
  """Checks inputs and output, runs the pipeline, returns the metadata."""
  logging.info("The config:\n%s", json.dumps(config.to_json_dict(), indent=2))
  files, skipped = check_inputs(config)
  logging.info("%d input file(s), %.1f MB; %d empty file(s) skipped",
               len(files), sum(f.size for f in files) / 1e6, len(skipped))
  prepare_output_dir(config)
  options = PipelineOptions(direct_runner_defaults(pipeline_args))
  with beam.Pipeline(runner=choose_runner(options), options=options) as p:
    build_pipeline(p, config=config, files=files, skipped=skipped)
  metadata = metadata_lib.load_dataset_metadata(config.output_dir,
                                                flag="output_dir")
  for split, s in metadata.splits.items():
    logging.info("%s: %d documents, %d tokens, %d windows in %d shard(s), "
                 "%d unknown, %d dropped", split, s.documents, s.tokens,
                 s.windows, s.shards, s.unknown_tokens, s.dropped_tokens)
  summary = skipped_summary(metadata.skipped_files, sum(f.size for f in files))
  if summary:
    logging.warning(summary)
  return metadata
