"""Each job imports only `dataspec` (and itself); dataspec imports no job."""

import ast
import os

import pytest

from testutil import REPO, run_python

JOBS = ("beam_preprocess", "trainer", "generate")


def _imports(package):
  for root, _, files in os.walk(os.path.join(REPO, package)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            for alias in node.names:
              yield path, alias.name.split(".")[0]
          elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield path, node.module.split(".")[0]


@pytest.mark.parametrize("package", JOBS + ("dataspec",))
def test_no_job_imports_another(package):
  assert os.path.isdir(os.path.join(REPO, package))
  forbidden = set(JOBS) - {package}
  bad = [(p, m) for p, m in _imports(package) if m in forbidden]
  assert not bad, f"{package} imports another job: {bad}"


# The SavedModel's graph code: TensorFlow modules by nature, the module
# that imports TensorFlow without Keras, and the compiled ops' builders
# (compiled against TensorFlow's headers). No other dataspec module imports
# TensorFlow at module level, so Beam workers (which install no TensorFlow)
# can load the contract.
TF_MODULES = {"graph_tokenizer.py", "serving.py", "lean_tensorflow.py", "native_ops.py",
              "decode_ops.py"}


def test_dataspec_and_beam_job_do_not_import_tensorflow_at_module_level():
  for package in ("dataspec", "beam_preprocess"):
    for path in os.listdir(os.path.join(REPO, package)):
      if path.endswith(".py") and not (package == "dataspec" and path in TF_MODULES):
        tree = ast.parse(open(os.path.join(REPO, package, path)).read())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top for a in n.names} | {
            n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert "tensorflow" not in names, f"{package}/{path} imports tensorflow"


def test_the_beam_job_loads_without_tensorflow():
  modules = ["beam_preprocess.main", "beam_preprocess.pipeline"] + [
      f"dataspec.{p[:-3]}" for p in os.listdir(os.path.join(REPO, "dataspec"))
      if p.endswith(".py") and p not in TF_MODULES]
  code = ("import importlib, sys\n"
          f"for m in {modules!r}: importlib.import_module(m)\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
  out = run_python(code, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert out.strip() == "[]"


def test_generation_and_evaluation_load_tensorflow_without_keras():
  # dataspec.lean_tensorflow: the jobs' TensorFlow imports Keras nowhere
  # (17 MB), and Keras still imports in full when something asks for it.
  code = ("import sys\n"
          "import generate.generate, generate.evaluate\n"
          "import tensorflow as tf\n"
          "assert 'keras' not in sys.modules, sorted(sys.modules)\n"
          "assert tf.constant(2.0).numpy() == 2.0\n"
          "from tensorflow.keras import layers\n"
          "import keras\n"
          "assert layers.Dense is keras.layers.Dense is tf.keras.layers.Dense\n"
          "assert keras.optimizers.Adam\n"
          "print('ok')")
  out = run_python(code, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
  assert out.strip() == "ok"
