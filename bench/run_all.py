r"""Runs every benchmark and writes bench/results/RESULTS.md and a plot.

  python bench/run_all.py [--skip_quality] [--quality_recipe=shakespeare_char]

1. bench_preprocess.py, bench_subword.py, bench_input.py, bench_train.py,
   bench_generate.py, bench_eval.py, bench_cpu_peak.py: each prints a markdown table of
   absolute numbers and the ratio to a baseline measured in the same run;
   they are collected into RESULTS.md with the machine's description.
   bench_generate.py also measures its decode targets' two ratios in pairs
   (--pairs=10: fused/PyTorch at batch 256, fused/Keras at batch 1).
2. The quality recipe (recipes/<name>/*.flags): preprocess + train, then its
   validation loss is plotted against wall time and against tokens seen
   (bench/results/validation_loss.svg) from the run's TensorBoard events,
   next to the baseline of the same run: the tutorial recipe (Keras
   Sequential, one-hot target for the last position of each window,
   train_on_batch on an in-memory id array) trained on the same text split
   for the same wall time, its validation loss measured on 1,024 fixed
   validation windows every --baseline_eval_seconds.
"""

import datetime
from html import escape
import math
import os
import platform
import subprocess
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")

_SKIP_QUALITY = flags.DEFINE_bool("skip_quality", False, "Skip the quality run.")
_RECIPE = flags.DEFINE_string("quality_recipe", "shakespeare_char", "Recipe to train.")
_BASELINE_EVAL_SECONDS = flags.DEFINE_float(
    "baseline_eval_seconds", 60, "Seconds between the baseline's validation runs.")


def run_bench(script, *args):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *args],
                        capture_output=True, text=True, check=False, cwd=REPO)
  if proc.returncode:
    raise RuntimeError(f"{script} failed (exit status {proc.returncode}):\n"
                       f"{proc.stderr[-5000:]}")
  out = proc.stdout
  lines = out.splitlines()
  first = next(i for i, l in enumerate(lines) if l.startswith("|"))
  last = max(i for i, l in enumerate(lines) if l.startswith("|"))
  return ("\n".join(lines[:first]).strip(),
          "\n".join(lines[first:last + 1] + [""] + lines[last + 1:]).strip())


def read_validation_curve(model_dir, tokens_per_step):
  """(wall seconds since start, tokens seen, loss) per validation point."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  points = []
  for split in ("train", "validation"):
    directory = os.path.join(model_dir, "tensorboard", split)
    for name in sorted(os.listdir(directory)):
      for record in tf.data.TFRecordDataset(os.path.join(directory, name)):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
          if value.tag == "loss":
            loss = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
            points.append((split, event.wall_time, event.step, loss))
  start = min(p[1] for p in points)
  val = sorted((w - start, s * tokens_per_step, l) for sp, w, s, l in points if sp == "validation")
  return val


def tutorial_curve(values, seconds):
  """The tutorial recipe on the recipe's text for `seconds` of wall time:
  [(wall seconds, target tokens seen, validation loss)]."""
  import json  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from dataspec import metadata  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer  # pylint: disable=g-import-not-at-top
  import tutorial  # pylint: disable=g-import-not-at-top
  dataset_dir = os.path.join(REPO, values["dataset_dir"])
  meta = metadata.load_dataset_metadata(dataset_dir)
  config = json.load(open(os.path.join(dataset_dir, "config.json")))
  text = "".join(open(os.path.join(REPO, path), encoding="utf-8").read()
                 for path in config["input"])
  tok = tokenizer.Tokenizer(meta.tokenizer_spec,
                            vocab=metadata.load_vocab_for(dataset_dir, meta))
  ids = tok.encode(text)  # the tutorial holds the corpus in memory
  cut = int(len(ids) * (1 - config["validation_fraction"]))
  train_ids, val_ids = ids[:cut], ids[cut:]
  window, batch, vocab = meta.window_length, int(values["batch_size"]), meta.vocab_size
  model = tutorial.tutorial_model(
      vocab=vocab, window=window, embedding=int(values["embedding_dim"]),
      units=int(values["units"]), layers=int(values["num_layers"]))
  rng = np.random.default_rng(0)
  val_starts = rng.integers(0, len(val_ids) - window - 1, 1024)
  val_x = np.stack([val_ids[s:s + window] for s in val_starts])
  val_y = keras.utils.to_categorical(val_ids[val_starts + window], vocab)
  start, seen, curve, next_eval = time.time(), 0, [], 0.0
  while True:
    elapsed = time.time() - start
    if elapsed >= next_eval or elapsed >= seconds:
      loss = float(model.evaluate(val_x, val_y, batch_size=256, verbose=0))
      curve.append((elapsed, seen, loss))
      print(f"baseline {elapsed / 60:.1f} min, {seen:,} targets: validation loss {loss:.3f}",
            flush=True)
      next_eval += _BASELINE_EVAL_SECONDS.value
      if elapsed >= seconds:
        return curve
    starts = rng.integers(0, len(train_ids) - window - 1, batch)
    x = np.stack([train_ids[s:s + window] for s in starts])
    y = keras.utils.to_categorical(train_ids[starts + window], vocab)  # one-hot
    model.train_on_batch(x, y)
    seen += batch


def plot_curve(curve, recipe, baseline=None):
  """Writes bench/results/validation_loss.svg: validation loss against wall
  time and (log scale) against target tokens seen, ours and the tutorial's.

  Plain SVG written here rather than with matplotlib: Keras imports
  matplotlib whenever it is installed, which would add ~28 MB to every
  TensorFlow process the benches measure (the jobs' image has none).
  """
  runs = [("ours: " + recipe, curve, "#1f77b4")]
  if baseline:
    runs.append(("tutorial recipe", baseline, "#ff7f0e"))
  losses = [c[2] for _, points, _ in runs for c in points]
  low, high = min(losses), max(losses)
  pad = 0.05 * (high - low or 1.0)
  low, high = low - pad, high + pad
  width, height, left, top, plot_w, plot_h = 1100, 420, 70, 50, 420, 300
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">'
         f'{escape(recipe)}: validation loss ({os.cpu_count()} CPUs)</text>']

  def panel(x0, label, value, log):
    """One panel at x offset x0; value(point) is its x; log: log10 x axis."""
    xs = [value(c) for _, points, _ in runs for c in points]
    to_axis = (lambda v: math.log10(max(v, 1))) if log else (lambda v: v)
    lo, hi = to_axis(min(xs)), to_axis(max(xs))
    hi = hi if hi > lo else lo + 1
    px = lambda v: x0 + (to_axis(v) - lo) / (hi - lo) * plot_w
    py = lambda loss: top + (high - loss) / (high - low) * plot_h
    out.append(f'<rect x="{x0}" y="{top}" width="{plot_w}" height="{plot_h}" '
               f'fill="none" stroke="black"/>')
    for i in range(6):  # loss ticks and grid
      loss = low + i * (high - low) / 5
      out.append(f'<line x1="{x0}" x2="{x0 + plot_w}" y1="{py(loss):.1f}" y2="{py(loss):.1f}" '
                 f'stroke="#ddd"/><text x="{x0 - 6}" y="{py(loss) + 4:.1f}" '
                 f'text-anchor="end">{loss:.2f}</text>')
    ticks = ([10 ** e for e in range(math.floor(lo), math.ceil(hi) + 1)
              if lo <= e <= hi] if log else [lo + i * (hi - lo) / 5 for i in range(6)])
    for tick in ticks:
      text = f"1e{round(math.log10(tick))}" if log else f"{tick:.1f}"
      out.append(f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{top}" '
                 f'y2="{top + plot_h}" stroke="#ddd"/><text x="{px(tick):.1f}" '
                 f'y="{top + plot_h + 16}" text-anchor="middle">{text}</text>')
    out.append(f'<text x="{x0 + plot_w / 2}" y="{top + plot_h + 36}" '
               f'text-anchor="middle">{label}</text>')
    out.append(f'<text x="{x0 - 50}" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 {x0 - 50} {top + plot_h / 2})">'
               f'validation loss (nats/token)</text>')
    for n, (name, points, color) in enumerate(runs):
      coords = [(px(value(c)), py(c[2])) for c in points]
      out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                 + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords) + '"/>')
      out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>'
                 for x, y in coords)
      out.append(f'<text x="{x0 + plot_w - 10}" y="{top + 18 + 16 * n}" text-anchor="end" '
                 f'fill="{color}">{escape(name)}</text>')

  panel(left, "wall time (minutes)", lambda c: c[0] / 60, log=False)
  panel(left + plot_w + 130, "target tokens seen", lambda c: c[1], log=True)
  out.append("</svg>")
  path = os.path.join(RESULTS, "validation_loss.svg")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(out) + "\n")
  os.replace(path + ".tmp", path)


def quality_run(recipe):
  bin_dir = os.path.dirname(sys.executable)
  pre = os.path.join(REPO, "recipes", recipe, "preprocess.flags")
  train = os.path.join(REPO, "recipes", recipe, "train.flags")
  subprocess.run([os.path.join(bin_dir, "textgen-preprocess"), f"--flagfile={pre}"],
                 check=True, cwd=REPO, capture_output=True)
  flag_lines = [l.strip() for l in open(train) if l.startswith("--")]
  values = dict(l[2:].split("=", 1) for l in flag_lines if "=" in l)
  model_dir = os.path.join(REPO, values["model_dir"])
  subprocess.run(["rm", "-rf", model_dir], check=True)
  subprocess.run([os.path.join(bin_dir, "textgen-train"), f"--flagfile={train}"],
                 check=True, cwd=REPO, capture_output=True)
  import json  # pylint: disable=g-import-not-at-top
  meta = json.load(open(os.path.join(REPO, values["dataset_dir"], "metadata.json")))
  tokens_per_step = int(values["batch_size"]) * meta["window_length"]
  curve = read_validation_curve(model_dir, tokens_per_step)
  baseline = tutorial_curve(values, seconds=curve[-1][0])
  plot_curve(curve, recipe, baseline)
  best = min(c[2] for c in curve)
  return (f"Recipe `{recipe}`: best validation loss {best:.3f} nats/token, "
          f"final {curve[-1][2]:.3f} after {curve[-1][0] / 60:.1f} min "
          f"({curve[-1][1] / 1e6:.1f}M tokens). Baseline (tutorial recipe, same "
          f"text, same wall time): {baseline[-1][2]:.3f} after {baseline[-1][1]:,} "
          f"targets; ours is {baseline[-1][2] - curve[-1][2]:.3f} nats/token lower and "
          f"saw {curve[-1][1] / max(baseline[-1][1], 1):,.0f}x the targets."
          f"\n\n![validation loss](validation_loss.svg)")


def main(_):
  os.makedirs(RESULTS, exist_ok=True)
  machine = (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}, {datetime.date.today()}")
  sections = [f"# Benchmark results\n\nMachine: {machine}\n"]
  for title, script, args in (
      ("Preprocessing (DirectRunner, 2 workers)", "bench_preprocess.py", ["--workers=2"]),
      ("Unigram training", "bench_subword.py", []),
      ("Training input pipeline", "bench_input.py", []),
      ("Training", "bench_train.py", []),
      ("Generation", "bench_generate.py", ["--pairs=10"]),
      ("Evaluation (textgen-eval's scoring)", "bench_eval.py", []),
      ("CPU ceilings: FMA units and matrix products", "bench_cpu_peak.py", [])):
    header, table = run_bench(script, *args)
    sections.append(f"## {title}\n\n{header}\n\n{table}\n")
    print(sections[-1], flush=True)
  if not _SKIP_QUALITY.value:
    sections.append("## Quality\n\n" + quality_run(_RECIPE.value) + "\n")
  with open(os.path.join(RESULTS, "RESULTS.md"), "w") as f:
    f.write("\n".join(sections))
  print(f"Wrote {os.path.join(RESULTS, 'RESULTS.md')}")


if __name__ == "__main__":
  app.run(main)
