"""Shared fixtures: tiny_corpus -> tiny_dataset -> (trainer tests) tiny_run.

TensorFlow's CPU is split into 2 logical devices here, before anything else
initializes TF, so MirroredStrategy tests get 2 replicas in this process.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TESTS))
sys.path.insert(0, _TESTS)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2)

from testutil import BEAM_ARGS, shakespeare_text  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
  """Three small real documents (tinyshakespeare slices) in a directory."""
  root = tmp_path_factory.mktemp("corpus")
  text = shakespeare_text(60_000)
  thirds = [text[:20_000], text[20_000:40_000], text[40_000:]]
  for i, part in enumerate(thirds):
    (root / f"doc{i}.txt").write_text(part, encoding="utf-8")
  return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_corpus, tmp_path_factory):
  """A char dataset (window 32, last 10% of each document for validation)."""
  from beam_preprocess import config as config_lib  # pylint: disable=g-import-not-at-top
  from beam_preprocess import pipeline  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("dataset")
  config = config_lib.PreprocessConfig(
      input=(str(tiny_corpus),), output_dir=str(out),
      tokenizer=tokenizer.TokenizerSpec(type="char"), window_length=32,
      split_mode="tail", validation_fraction=0.1, chunk_bytes=8192,
      num_shards=2)
  pipeline.run(config, pipeline_args=BEAM_ARGS)
  return out


SMALL_MODEL = dict(embedding_dim=16, units=32, num_layers=2, batch_size=16,
                   learning_rate=1e-2, log_every=10, checkpoint_every=10)


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
  """A model trained 40 steps on tiny_dataset under MirroredStrategy (2 CPUs).

  Returns (model_dir, result, loss before training, trainer).
  """
  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainer import train  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path_factory.mktemp("run")
  config = config_lib.TrainConfig(dataset_dir=str(tiny_dataset), model_dir=str(model_dir),
                                  train_steps=40, eval_every=20, **SMALL_MODEL)
  trainer = train.Trainer(config)
  before = trainer.evaluate()["loss"]
  result = trainer.run()
  trainer.store.close()
  trainer.best_store.close()
  return model_dir, result, before, trainer


@pytest.fixture(autouse=True)
def _inter_op_threads_env():
  """textgen-generate --decode_ops=fused run in this process sets
  TF_NUM_INTEROP_THREADS=1 (dataspec.decode_ops.use_one_inter_op_thread;
  TensorFlow started long before, so it changes nothing here): it must not
  reach the processes that later tests start, multi-worker trainers among
  them."""
  from dataspec.decode_ops import INTER_OP_ENV  # pylint: disable=g-import-not-at-top
  before = os.environ.get(INTER_OP_ENV)
  yield
  if before is None:
    os.environ.pop(INTER_OP_ENV, None)
  else:
    os.environ[INTER_OP_ENV] = before


@pytest.fixture(autouse=True, scope="session")
def _absl_flags_parsed():
  """Tests call main() under flagsaver, as app.run would after parsing."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """fake-gcs-server on 127.0.0.1; STORAGE_EMULATOR_HOST points at it."""
  from gcs import Emulator  # pylint: disable=g-import-not-at-top
  emulator = Emulator(str(tmp_path_factory.mktemp("gcs") / "fake-gcs.log"))
  os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
  # Without credentials Beam's gs:// filesystem asks google.auth 5 times
  # with backoff (22 s per process) and then connects anonymously, which is
  # what the emulator takes: this process starts at that conclusion.
  from apache_beam.internal.gcp import auth  # pylint: disable=g-import-not-at-top
  auth._Credentials._credentials_init = True  # pylint: disable=protected-access
  os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "test")
  yield emulator
  os.environ.pop("STORAGE_EMULATOR_HOST", None)
  emulator.stop()


@pytest.fixture
def bucket(gcs_emulator, request):
  """A new, empty bucket; returns its gs:// URI."""
  from dataspec import storage  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  name = re.sub(r"[^a-z0-9]", "-", request.node.name.lower())[:50].strip("-") + "-b"
  storage._client().create_bucket(name)  # pylint: disable=protected-access
  return f"gs://{name}"
