"""TF_CONFIG for a Kubernetes Indexed Job (no operator needed).

Each pod of the Indexed Job gets JOB_COMPLETION_INDEX from Kubernetes and,
from its manifest, TEXTGEN_NUM_WORKERS, TEXTGEN_WORKER_HOSTNAME (a pattern
with "{index}", e.g. "textgen-train-mw-{index}.textgen-train-workers", the DNS
names the headless Service gives the pods) and TEXTGEN_WORKER_PORT.
"""

import json
import os
from typing import Mapping, Optional


def tf_config_for_index(*, index: int, num_workers: int, hostname_pattern: str,
                        port: int) -> dict:
  """The TF_CONFIG of worker `index` in a cluster of `num_workers`.

  Example:
    >>> tf_config_for_index(index=1, num_workers=2, port=2222,
    ...                     hostname_pattern="job-{index}.svc")
    {'cluster': {'worker': ['job-0.svc:2222', 'job-1.svc:2222']},
     'task': {'type': 'worker', 'index': 1}}
  """
  if num_workers < 1:
    raise ValueError(f"TEXTGEN_NUM_WORKERS must be >= 1, got {num_workers}")
  if not 0 <= index < num_workers:
    raise ValueError(f"JOB_COMPLETION_INDEX={index} is not in [0, {num_workers})")
  if "{index}" not in hostname_pattern:
    raise ValueError("TEXTGEN_WORKER_HOSTNAME must contain {index}, got "
                     f"{hostname_pattern!r}")
  workers = [f"{hostname_pattern.format(index=i)}:{port}" for i in range(num_workers)]
  return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def tf_config_from_env(env: Mapping[str, str]) -> Optional[str]:
  """TF_CONFIG as JSON from an Indexed Job's environment, or None when the
  environment does not describe one (or TF_CONFIG is already set)."""
  if env.get("TF_CONFIG") or "TEXTGEN_NUM_WORKERS" not in env:
    return None
  if "JOB_COMPLETION_INDEX" not in env:
    raise ValueError("TEXTGEN_NUM_WORKERS is set but JOB_COMPLETION_INDEX is "
                     "not: run the workers as an Indexed Job")
  config = tf_config_for_index(
      index=int(env["JOB_COMPLETION_INDEX"]),
      num_workers=int(env["TEXTGEN_NUM_WORKERS"]),
      hostname_pattern=env.get("TEXTGEN_WORKER_HOSTNAME", ""),
      port=int(env.get("TEXTGEN_WORKER_PORT", "2222")))
  return json.dumps(config)


def set_tf_config_from_indexed_job(env=os.environ):
  """Sets TF_CONFIG in `env` when it describes an Indexed Job worker."""
  derived = tf_config_from_env(env)
  if derived:
    env["TF_CONFIG"] = derived
