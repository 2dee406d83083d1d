"""Kubernetes manifests, offline: kustomize builds, schema validation, the
rules only an API server enforces, flags that exist, TF_CONFIG derivation."""

import json
import os
import re
import shutil
import subprocess
import sys

from absl import flags
import pytest
import yaml

from beam_preprocess import main as preprocess_main
from generate import eval_main
from generate import main as generate_main
from trainer import cluster
from trainer import main as train_main
from testutil import REPO

K8S = os.path.join(REPO, "k8s")
OVERLAYS = ["preprocess", "preprocess-dataflow", "train", "train-multiworker", "generate",
            "eval"]
K8S_VERSION = "1.33.0"
COMMANDS = {"textgen-preprocess": preprocess_main, "textgen-train": train_main,
            "textgen-generate": generate_main, "textgen-eval": eval_main}


def kubectl():
  path = shutil.which("kubectl") or os.path.join(REPO, ".tools", "kubectl")
  assert os.path.exists(path), "kubectl not found (./install.sh fetches one)"
  return path


def build(overlay):
  out = subprocess.run([kubectl(), "kustomize", os.path.join(K8S, overlay)],
                       capture_output=True, text=True, check=True).stdout
  return out, [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates_strictly(overlay, tmp_path):
  text, docs = build(overlay)
  assert any(d["kind"] == "Job" for d in docs)
  path = tmp_path / "built.yaml"
  path.write_text(text)
  validate = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
  result = subprocess.run([validate, "--strict", "-k", K8S_VERSION, str(path)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "passed" in result.stdout + result.stderr


def _jobs(docs):
  return [d for d in docs if d["kind"] == "Job"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_a_server_enforces(overlay):
  _, docs = build(overlay)
  services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
  for job in _jobs(docs):
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    if "podFailurePolicy" in spec:
      assert pod["restartPolicy"] == "Never"
    if spec.get("completionMode") == "Indexed":
      assert spec["completions"] >= 1
    if "subdomain" in pod:
      svc = services[pod["subdomain"]]
      assert svc["spec"]["clusterIP"] == "None"  # headless
      selector = svc["spec"]["selector"]
      # The Job controller labels its pods job-name=<job name>.
      pod_labels = dict(job["spec"]["template"]["metadata"].get("labels", {}),
                        **{"job-name": job["metadata"]["name"]})
      assert all(pod_labels.get(k) == v for k, v in selector.items())
    assert spec["backoffLimit"] >= 1 and spec["ttlSecondsAfterFinished"] > 0
    assert pod["serviceAccountName"] == "textgen"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in pod["containers"]:
      assert c["image"].split(":")[-1] not in ("", "latest") and ":" in c["image"]
      sc = c["securityContext"]
      assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
      assert c["resources"]["requests"] == c["resources"]["limits"]
      gpus = c["resources"]["limits"].get("nvidia.com/gpu")
      if gpus:
        assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
      mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
      assert "/scratch" in mounts
      for arg in c["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
          assert var in {e["name"] for e in c["env"]}, f"{arg}: $({var}) undefined"


def _known_flags(command):
  module = COMMANDS[command]
  names = set(module.FLAGS) | set(flags.FLAGS)  # absl's own flags work too
  if command == "textgen-preprocess":
    names |= {n.lstrip("-") for n in preprocess_main.beam_options().options}
  return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_flag_in_args_exists(overlay):
  _, docs = build(overlay)
  for job in _jobs(docs):
    for c in job["spec"]["template"]["spec"]["containers"]:
      command = c["command"][0]
      known = _known_flags(command)
      for arg in c["args"]:
        assert arg.startswith("--"), arg
        name = arg[2:].split("=", 1)[0]
        if name.startswith("no") and name[2:] in known:
          continue
        assert name in known, f"{overlay}: {command} has no flag --{name}"


def test_settings_are_in_one_place():
  for overlay in OVERLAYS:
    _, docs = build(overlay)
    images = {c["image"] for j in _jobs(docs)
              for c in j["spec"]["template"]["spec"]["containers"]}
    assert images == {"us-docker.pkg.dev/my-project/textgen/textgen-lstm:0.1.0"}
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert maps and maps[0]["data"]["BUCKET"] == "my-textgen-bucket"


@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_tf_config_derivation_for_every_index(num_workers):
  _, docs = build("train-multiworker")
  job = _jobs(docs)[0]
  env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
  seen = []
  for index in range(num_workers):
    derived = json.loads(cluster.tf_config_from_env({
        "JOB_COMPLETION_INDEX": str(index), "TEXTGEN_NUM_WORKERS": str(num_workers),
        "TEXTGEN_WORKER_HOSTNAME": env["TEXTGEN_WORKER_HOSTNAME"],
        "TEXTGEN_WORKER_PORT": env["TEXTGEN_WORKER_PORT"]}))
    assert derived["task"] == {"type": "worker", "index": index}
    assert derived["cluster"]["worker"] == [
        f"textgen-train-mw-{i}.textgen-train-workers:2222" for i in range(num_workers)]
    seen.append(derived["cluster"])
  assert all(c == seen[0] for c in seen)  # every worker sees the same cluster
  assert int(env["TEXTGEN_NUM_WORKERS"]) == job["spec"]["completions"] == job["spec"]["parallelism"]


def test_tf_config_errors_and_passthrough():
  assert cluster.tf_config_from_env({"TF_CONFIG": "{}", "TEXTGEN_NUM_WORKERS": "2"}) is None
  assert cluster.tf_config_from_env({}) is None
  with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX=2"):
    cluster.tf_config_from_env({"JOB_COMPLETION_INDEX": "2", "TEXTGEN_NUM_WORKERS": "2",
                                "TEXTGEN_WORKER_HOSTNAME": "w-{index}.s"})
  with pytest.raises(ValueError, match="Indexed Job"):
    cluster.tf_config_from_env({"TEXTGEN_NUM_WORKERS": "2"})
