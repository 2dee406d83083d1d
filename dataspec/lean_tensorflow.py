"""Imports TensorFlow without importing Keras: 17 MB less memory for jobs
that run TensorFlow functions and no Keras (generation, evaluation).

`import tensorflow` imports the Keras package (TensorFlow 2.21: its __init__
eagerly imports `keras.src.optimizers`, and `tf.compat.v1` looks up
`keras.api._v1.keras`), 17 of the 192 MB of anonymous memory the import
leaves on a 2-core EPYC (2026-12-02); a batch-1 generation job peaks at
236 MB without it instead of 254. TensorFlow catches the ImportError of
each of those imports, so here they fail while TensorFlow loads: the Keras
package is found (TensorFlow reads where it is from its spec) but not
executed. Afterwards nothing is refused: `import keras` and `tf.keras`
import Keras as usual, in full, when something asks for it.

Import this module before anything imports TensorFlow; once TensorFlow is
imported it changes nothing.
"""

import importlib.abc
import importlib.machinery
import sys

# The packages `import tensorflow` may load Keras from (TF_USE_LEGACY_KERAS
# selects tf_keras).
_KERAS_PACKAGES = ("keras", "tf_keras")


class _KerasNotYet(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Finds the Keras packages where they are but refuses to run them."""

  def find_spec(self, fullname, path=None, target=None):
    del target  # unused
    if fullname not in _KERAS_PACKAGES:
      return None
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None:
      return None
    spec.loader = self
    return spec

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    raise ImportError(f"{module.__name__} is not imported while TensorFlow loads "
                      "(dataspec.lean_tensorflow)", name=module.__name__)


def _import_tensorflow():
  if "tensorflow" in sys.modules or any(p in sys.modules for p in _KERAS_PACKAGES):
    return
  finder = _KerasNotYet()
  sys.meta_path.insert(0, finder)
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  finally:
    sys.meta_path.remove(finder)


_import_tensorflow()
