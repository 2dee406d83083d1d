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
OVERLAYS = ["preprocess", "preprocess-dataflow", "train", "train-multiworker",
            "train-jobset", "generate", "eval", "generate-cpu", "eval-cpu"]
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
  _, docs = build(overlay)
  assert _jobs(docs)
  # A JobSet is not in the validator's schemas: its embedded Job templates,
  # as the Jobs the JobSet controller creates, are validated instead.
  path = tmp_path / "built.yaml"
  path.write_text(yaml.safe_dump_all(
      [d for d in docs if d["kind"] != "JobSet"] + [j for j in _jobs(docs) if _jobset_of(j)]))
  validate = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
  result = subprocess.run([validate, "--strict", "-k", K8S_VERSION, str(path)],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "passed" in result.stdout + result.stderr


def _jobs(docs):
  """The Jobs, and for each JobSet the Jobs its controller creates (named
  <jobset>-<replicatedJob>-<index>, as its placement code does)."""
  jobs = [d for d in docs if d["kind"] == "Job"]
  for js in (d for d in docs if d["kind"] == "JobSet"):
    for rj in js["spec"]["replicatedJobs"]:
      for index in range(rj.get("replicas", 1)):
        jobs.append({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": f"{js['metadata']['name']}-{rj['name']}-{index}",
                                  "labels": {"jobset.sigs.k8s.io/jobset-name":
                                             js["metadata"]["name"]}},
                     "spec": rj["template"]["spec"]})
  return jobs


def _jobset_of(job):
  return job["metadata"].get("labels", {}).get("jobset.sigs.k8s.io/jobset-name")


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
    if _jobset_of(job):  # JobSet restarts the whole group instead
      assert spec["backoffLimit"] == 0
    else:
      assert spec["backoffLimit"] >= 1 and spec["ttlSecondsAfterFinished"] > 0
    if "subdomain" in pod:
      svc = services[pod["subdomain"]]
      assert svc["spec"]["clusterIP"] == "None"  # headless
      selector = svc["spec"]["selector"]
      # The Job controller labels its pods job-name=<job name>.
      pod_labels = dict(job["spec"]["template"]["metadata"].get("labels", {}),
                        **{"job-name": job["metadata"]["name"]})
      assert all(pod_labels.get(k) == v for k, v in selector.items())
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


@pytest.mark.parametrize("overlay,base", [("generate-cpu", "generate"), ("eval-cpu", "eval")])
def test_cpu_variants_ask_for_no_gpu_and_run_the_fused_ops(overlay, base):
  """The CPU variants: their base Job's args plus --decode_ops=fused, no GPU
  in requests or limits, no GPU toleration, a name of their own."""
  (job,), (base_job,) = _jobs(build(overlay)[1]), _jobs(build(base)[1])
  pod, base_pod = job["spec"]["template"]["spec"], base_job["spec"]["template"]["spec"]
  (container,), (base_container,) = pod["containers"], base_pod["containers"]
  assert container["args"] == base_container["args"] + ["--decode_ops=fused"]
  assert "nvidia.com/gpu" in base_container["resources"]["limits"]
  for kind in ("requests", "limits"):
    assert set(container["resources"][kind]) == {"cpu", "memory"}
  assert "tolerations" in base_pod and "tolerations" not in pod
  assert job["metadata"]["name"] == base_job["metadata"]["name"] + "-cpu"


def test_settings_are_in_one_place():
  for overlay in OVERLAYS:
    _, docs = build(overlay)
    images = {c["image"] for j in _jobs(docs)
              for c in j["spec"]["template"]["spec"]["containers"]}
    assert images == {"us-docker.pkg.dev/my-project/textgen/textgen-lstm:0.1.0"}
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert maps and maps[0]["data"]["BUCKET"] == "my-textgen-bucket"


# From the published JobSet API (kubernetes-sigs/jobset: the v1alpha2 CRD
# and the admission webhook's checks), not copied from it.
_JOBSET_SPEC = {"coordinator", "failurePolicy", "managedBy", "network", "replicatedJobs",
                "startupPolicy", "successPolicy", "suspend", "ttlSecondsAfterFinished",
                "volumeClaimPolicies"}
_FAILURE_POLICY = {"maxRestarts", "restartStrategy", "rules"}
_RESTART_STRATEGIES = {"Recreate", "BlockingRecreate", "InPlaceRestart"}
_RULE = {"action", "name", "onJobFailureMessagePatterns", "onJobFailureReasons",
         "targetReplicatedJobs"}
_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts", "RestartJob",
            "RestartJobAndIgnoreMaxRestarts"}
_JOB_FAILURE_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes",
                        "MaxFailedIndexesExceeded", "PodFailurePolicy"}
_NETWORK = {"enableDNSHostnames", "publishNotReadyAddresses", "subdomain"}
_REPLICATED_JOB = {"dependsOn", "groupName", "name", "replicas", "template"}
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")


def test_jobset_follows_the_published_api():
  _, docs = build("train-jobset")
  jobsets = [d for d in docs if d["kind"] == "JobSet"]
  assert len(jobsets) == 1 and not [d for d in docs if d["kind"] == "Job"]
  js = jobsets[0]
  assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
  name, spec = js["metadata"]["name"], js["spec"]
  assert set(spec) <= _JOBSET_SPEC, set(spec) - _JOBSET_SPEC
  net = spec["network"]
  assert set(net) <= _NETWORK and net["enableDNSHostnames"] is True
  assert _DNS1035.match(net["subdomain"]) and len(net["subdomain"]) <= 63
  rjs = spec["replicatedJobs"]
  names = [rj["name"] for rj in rjs]
  assert len(set(names)) == len(names)
  for rj in rjs:
    assert set(rj) <= _REPLICATED_JOB and {"name", "template"} <= set(rj)
    assert isinstance(rj.get("replicas", 1), int) and rj.get("replicas", 1) >= 0
    assert set(rj["template"]) <= {"metadata", "spec"}
    # The webhook: generated Job and pod names must be DNS-1035 labels.
    job_name = f"{name}-{rj['name']}-{rj.get('replicas', 1) - 1}"
    pod_name = f"{job_name}-{rj['template']['spec']['completions'] - 1}-abcde"
    for generated in (job_name, pod_name):
      assert _DNS1035.match(generated) and len(generated) <= 63, generated
  policy = spec["failurePolicy"]
  assert set(policy) <= _FAILURE_POLICY and policy["restartStrategy"] in _RESTART_STRATEGIES
  assert isinstance(policy["maxRestarts"], int) and policy["maxRestarts"] >= 1
  for rule in policy["rules"]:
    assert set(rule) <= _RULE and {"name", "action"} <= set(rule)
    assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", rule["name"])
    assert rule["action"] in _ACTIONS
    assert set(rule.get("onJobFailureReasons", [])) <= _JOB_FAILURE_REASONS
    assert set(rule.get("targetReplicatedJobs", [])) <= set(names)
  assert spec["successPolicy"]["operator"] in ("All", "Any")
  assert set(spec["successPolicy"].get("targetReplicatedJobs", [])) <= set(names)
  # What this overlay is for: preemption (exit 143 or a DisruptionTarget
  # condition) fails the Job by its podFailurePolicy, and that reason
  # restarts the group without counting against maxRestarts; any other
  # failure fails the Job at once (backoffLimit 0) and restarts it, counted.
  preemption = [r for r in policy["rules"] if "PodFailurePolicy" in r.get("onJobFailureReasons", [])]
  assert [r["action"] for r in preemption] == ["RestartJobSetAndIgnoreMaxRestarts"]
  job = rjs[0]["template"]["spec"]
  rules = job["podFailurePolicy"]["rules"]
  assert {"action": "FailJob", "onExitCodes": {"containerName": "train", "operator": "In",
                                               "values": [143]}} in rules
  assert any(r["action"] == "FailJob" and r.get("onPodConditions", [{}])[0].get("type")
             == "DisruptionTarget" for r in rules)
  assert job["backoffLimit"] == 0 and job["completionMode"] == "Indexed"
  assert "subdomain" not in job["template"]["spec"]  # the JobSet's network sets it


@pytest.mark.parametrize("overlay,hosts", [
    ("train-multiworker", "textgen-train-mw-{i}.textgen-train-workers:2222"),
    ("train-jobset", "textgen-train-js-workers-0-{i}.textgen-train-js:2222")])
@pytest.mark.parametrize("num_workers", [1, 2, 4])
def test_tf_config_derivation_for_every_index(num_workers, overlay, hosts):
  _, docs = build(overlay)
  job = _jobs(docs)[0]
  env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
  seen = []
  for index in range(num_workers):
    derived = json.loads(cluster.tf_config_from_env({
        "JOB_COMPLETION_INDEX": str(index), "TEXTGEN_NUM_WORKERS": str(num_workers),
        "TEXTGEN_WORKER_HOSTNAME": env["TEXTGEN_WORKER_HOSTNAME"],
        "TEXTGEN_WORKER_PORT": env["TEXTGEN_WORKER_PORT"]}))
    assert derived["task"] == {"type": "worker", "index": index}
    assert derived["cluster"]["worker"] == [hosts.format(i=i) for i in range(num_workers)]
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
