"""Every console script behaves like an absl program (run as subprocesses):
--help/--helpfull exit 0 and list flags, usage errors are one line and no
traceback, errors found while running name the input without a traceback."""

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)
# The job's own flags that --help must show (with their help text), and a
# flag --helpfull adds.
JOBS = {
    "textgen-preprocess": {
        "own": ["--input: Files, directories or globs", "--tokenizer: <char|word|byte",
                "--window_length: Next-token targets per window"],
        "full": ["--verbosity", "--runner RUNNER", "Apache Beam pipeline options"],
        "required": ["--input", "--output_dir"],
        "bad_value": ["--input=x", "--output_dir=y", "--window_length=ten"],
        "bad_config": ["--input=x", "--output_dir=y", "--validation_fraction=1.5"],
    },
    "textgen-train": {
        "own": ["--dataset_dir: A complete beam_preprocess output.",
                "--units: LSTM units per layer.", "--strategy: <mirrored|multi_worker|one_device>"],
        "full": ["--verbosity", "--[no]logtostderr"],
        "required": ["--dataset_dir", "--model_dir"],
        "bad_value": ["--dataset_dir=x", "--model_dir=y", "--batch_size=big"],
        "bad_config": ["--dataset_dir=x", "--model_dir=y", "--dropout=1.5"],
    },
    "textgen-generate": {
        "own": ["--model_dir: Training model_dir or its export/.",
                "--temperature: Sampling temperature", "--top_p: Nucleus sampling"],
        "full": ["--verbosity", "--[no]logtostderr"],
        "required": ["--model_dir", "--output"],
        "bad_value": ["--model_dir=x", "--output=y", "--prompt=a", "--top_k=many"],
        "bad_config": ["--model_dir=x", "--output=y", "--prompt=a", "--top_p=0"],
    },
    "textgen-eval": {
        "own": ["--model_dir: Training model_dir or its export/.",
                "--input: Files, directories or globs to score",
                "--split: <validation|test>"],
        "full": ["--verbosity", "--[no]logtostderr"],
        "required": ["--model_dir", "--output"],
        "bad_value": ["--model_dir=x", "--output=y", "--input=a", "--batch_size=all"],
        "bad_config": ["--model_dir=x", "--output=y", "--input=a", "--chunk_tokens=0"],
    },
}


def _run(command, *args, **kwargs):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([os.path.join(BIN, command), *args], capture_output=True,
                        text=True, timeout=120, env=env, **kwargs)


@pytest.mark.parametrize("command", sorted(JOBS))
@pytest.mark.parametrize("flag", ["--help", "--helpshort", "-h"])
def test_help_lists_the_jobs_own_flags(command, flag):
  out = _run(command, flag)
  assert out.returncode == 0, out.stderr
  assert "Traceback" not in out.stdout + out.stderr
  assert f"Flags of {command}" in out.stdout
  for text in JOBS[command]["own"]:
    assert text in out.stdout, text
  assert "--verbosity" not in out.stdout  # absl's flags only with --helpfull
  assert "--helpfull" in out.stdout


@pytest.mark.parametrize("command", sorted(JOBS))
def test_helpfull_adds_absl_and_beam_flags(command):
  out = _run(command, "--helpfull", "--model_dir=ignored")
  assert out.returncode == 0, out.stderr
  for text in JOBS[command]["own"] + JOBS[command]["full"]:
    assert text in out.stdout, text


@pytest.mark.parametrize("command", sorted(JOBS))
def test_usage_errors_are_one_line_without_traceback(command):
  cases = {
      "missing": ([], "missing required flags " + ", ".join(JOBS[command]["required"])),
      "missing one": (JOBS[command]["bad_value"][:1],
                      "missing required flag " + JOBS[command]["required"][1]),
      "bad value": (JOBS[command]["bad_value"], JOBS[command]["bad_value"][-1]),
      "bad config": (JOBS[command]["bad_config"],
                     JOBS[command]["bad_config"][-1].split("=")[0]),
      "unknown": (JOBS[command]["bad_value"][:-1] + ["--no_such_flag=1"], "no_such_flag"),
  }
  for case, (args, expected) in cases.items():
    out = _run(command, *args)
    assert out.returncode != 0, case
    assert "Traceback" not in out.stderr, (case, out.stderr)
    fatal = [l for l in out.stderr.splitlines() if l.startswith("FATAL")]
    assert len(fatal) == 1 and expected in fatal[0], (case, out.stderr)
    assert "Pass --help or --helpfull" in out.stderr


def test_errors_found_while_running_name_the_input_without_traceback(tmp_path):
  out = _run("textgen-train", f"--dataset_dir={tmp_path / 'none'}",
             f"--model_dir={tmp_path / 'm'}")
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  fatal = [l for l in out.stderr.splitlines() if l.startswith("FATAL textgen-train")]
  assert len(fatal) == 1 and "--dataset_dir=" in fatal[0] and "COMPLETED" in fatal[0]
  out = _run("textgen-preprocess", f"--input={tmp_path / 'nothing*.txt'}",
             f"--output_dir={tmp_path / 'd'}")
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert "matched no files" in out.stderr
