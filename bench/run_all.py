r"""Runs every benchmark and writes bench/results/RESULTS.md and a plot.

  python bench/run_all.py [--skip_quality] [--quality_recipe=shakespeare_char]

1. bench_preprocess.py, bench_train.py, bench_generate.py: each prints a
   markdown table of absolute numbers and the ratio to a baseline measured in
   the same run; they are collected into RESULTS.md with the machine's
   description.
2. The quality recipe (recipes/<name>/*.flags): preprocess + train, then its
   validation loss is plotted against wall time and against tokens seen
   (bench/results/validation_loss.png) from the run's TensorBoard events.
"""

import datetime
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


def run_bench(script, *args):
  out = subprocess.run([sys.executable, os.path.join(REPO, "bench", script), *args],
                       capture_output=True, text=True, check=True, cwd=REPO).stdout
  lines = out.splitlines()
  first = next(i for i, l in enumerate(lines) if l.startswith("|"))
  return "\n".join(lines[:first]).strip(), "\n".join(l for l in lines[first:] if l.startswith("|"))


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


def plot_curve(curve, recipe):
  """Writes bench/results/validation_loss.png (loss vs wall time and tokens)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  a.plot([c[0] / 60 for c in curve], [c[2] for c in curve], marker="o")
  a.set_xlabel("wall time (minutes)")
  b.plot([c[1] / 1e6 for c in curve], [c[2] for c in curve], marker="o")
  b.set_xlabel("tokens seen (millions)")
  for ax in (a, b):
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(True, alpha=0.3)
  fig.suptitle(f"{recipe}: validation loss ({os.cpu_count()} CPUs)")
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, "validation_loss.png"), dpi=100)


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
  plot_curve(curve, recipe)
  best = min(c[2] for c in curve)
  return (f"Recipe `{recipe}`: best validation loss {best:.3f} nats/token, "
          f"final {curve[-1][2]:.3f} after {curve[-1][0] / 60:.1f} min "
          f"({curve[-1][1] / 1e6:.1f}M tokens).\n\n![validation loss](validation_loss.png)")


def main(_):
  os.makedirs(RESULTS, exist_ok=True)
  machine = (f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}, {datetime.date.today()}")
  sections = [f"# Benchmark results\n\nMachine: {machine}\n"]
  for title, script, args in (
      ("Preprocessing (DirectRunner, 2 workers)", "bench_preprocess.py", ["--workers=2"]),
      ("Training", "bench_train.py", []),
      ("Generation", "bench_generate.py", [])):
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
