"""The exported model: what the trainer writes and the generator reads.

  export/model_config.json  ModelSpec below (architecture, as JSON)
  export/weights.npz        numpy arrays, loaded with allow_pickle=False:
      embedding                 (vocab_size, embedding_dim)
      lstm_{i}/kernel           (input_dim, 4 * units)   gates i, f, c, o
      lstm_{i}/recurrent_kernel (units, 4 * units)
      lstm_{i}/bias             (4 * units,)
      projection/kernel, projection/bias   only if `projection_dim` > 0
      output/kernel             (last_dim, vocab_size)   (embedding.T if tied)
      output/bias               (vocab_size,)
  export/vocab.txt (or tokenizer.model for bpe/unigram), export/metadata.json
                            copies from the dataset
  export/training.json      step, losses and config of the run
  export/saved_model/       a TensorFlow SavedModel: text in, text out
                            (dataspec.serving; format_version >= 2)
  export/model.keras        the training model, Keras's native format
                            (format_version >= 2)
  export/EXPORTED           written last; its absence means "incomplete"

The LSTM is Keras's: i = sigmoid(x Wi + h Ui + bi), f, c~ = tanh(...), o;
c' = f c + i c~; h' = o tanh(c'). Nothing here needs TensorFlow or pickle,
so any runtime can load an export.
"""

import dataclasses
import io
import json
from typing import Dict

import numpy as np

from dataspec import paths
from dataspec import storage

FORMAT_VERSION = 2  # 2: saved_model/ and model.keras beside weights.npz
READABLE_FORMAT_VERSIONS = (1, 2)


class IncompleteExportError(ValueError):
  """The export directory lacks its EXPORTED marker."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The architecture of an Embedding -> LSTM x N -> Dense model.

  Attributes:
    vocab_size: ids in the vocabulary.
    embedding_dim: width of the token embedding.
    units: LSTM units per layer.
    num_layers: stacked LSTM layers.
    projection_dim: if > 0, a Dense(units -> projection_dim) before the output
      layer (used to tie embeddings when units != embedding_dim).
    tie_embeddings: the output kernel is the embedding matrix transposed.
    window_length: the training window (prompts may be longer).
    format_version: FORMAT_VERSION of the writer.
  """
  vocab_size: int
  embedding_dim: int
  units: int
  num_layers: int
  projection_dim: int = 0
  tie_embeddings: bool = False
  window_length: int = 0
  format_version: int = FORMAT_VERSION

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "ModelSpec":
    return cls(**json.loads(text))


def weight_shapes(spec: ModelSpec) -> Dict[str, tuple]:
  """The shape of every weight the export holds, by name."""
  expected = {"embedding": (spec.vocab_size, spec.embedding_dim)}
  in_dim = spec.embedding_dim
  for i in range(spec.num_layers):
    expected[f"lstm_{i}/kernel"] = (in_dim, 4 * spec.units)
    expected[f"lstm_{i}/recurrent_kernel"] = (spec.units, 4 * spec.units)
    expected[f"lstm_{i}/bias"] = (4 * spec.units,)
    in_dim = spec.units
  if spec.projection_dim:
    expected["projection/kernel"] = (in_dim, spec.projection_dim)
    expected["projection/bias"] = (spec.projection_dim,)
    in_dim = spec.projection_dim
  expected["output/kernel"] = (in_dim, spec.vocab_size)
  expected["output/bias"] = (spec.vocab_size,)
  return expected


def check_weights(spec: ModelSpec, weights: Dict[str, np.ndarray]):
  """Raises ValueError if names or shapes do not fit `spec`."""
  expected = weight_shapes(spec)
  if set(weights) != set(expected):
    raise ValueError(f"weights.npz holds {sorted(weights)}, expected {sorted(expected)}")
  for name, shape in expected.items():
    if tuple(weights[name].shape) != shape:
      raise ValueError(f"weights.npz: {name} has shape {weights[name].shape}, "
                       f"expected {shape}")


def write_weights(path: str, weights: Dict[str, np.ndarray]):
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in weights.items()})
  storage.write_bytes(path, buf.getvalue())


def read_weights(path: str) -> Dict[str, np.ndarray]:
  with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def find_export(model_dir: str) -> str:
  """model_dir/export, or model_dir itself when it is an export."""
  if storage.exists(paths.ExportPaths(model_dir).completed):
    return model_dir
  return paths.RunPaths(model_dir).export.root


def check_complete(export_dir: str, *, flag: str, given: str):
  """Raises IncompleteExportError naming --flag=given if export_dir lacks
  its EXPORTED marker."""
  if not storage.exists(paths.ExportPaths(export_dir).completed):
    raise IncompleteExportError(
        f"--{flag}={given}: no complete export at {export_dir} (EXPORTED marker "
        "missing): training has not exported yet, or the export was "
        "interrupted. Finish training or run textgen-train --export_only.")


def load_export(export_dir: str, *, flag: str = "model_dir"):
  """Reads a complete export.

  Returns:
    (ModelSpec, weights dict, DatasetMetadata, vocabulary (tokens, model
    bytes or None: see metadata.load_vocab_for), training dict).

  Raises:
    IncompleteExportError: EXPORTED is missing.
    ValueError: a file of the export does not match (weights, vocabulary).
  """
  from dataspec import metadata as metadata_lib  # pylint: disable=g-import-not-at-top
  from dataspec import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  ep = paths.ExportPaths(export_dir)
  if not storage.exists(ep.completed):
    raise IncompleteExportError(
        f"--{flag}: {export_dir} is not a complete export ({ep.completed} is "
        "missing): training has not exported yet, or the export was interrupted."
        " Run textgen-train to the end, or with --export_only.")
  spec = ModelSpec.from_json(storage.read_text(ep.model_config))
  if spec.format_version not in READABLE_FORMAT_VERSIONS:
    raise ValueError(f"{ep.model_config}: format_version {spec.format_version}, "
                     f"this code reads {READABLE_FORMAT_VERSIONS}")
  weights = read_weights(ep.weights)
  check_weights(spec, weights)
  meta = metadata_lib.DatasetMetadata.from_json(storage.read_text(ep.metadata))
  vocab = vocab_lib.read_for(ep, meta.tokenizer_spec, meta.vocab_fingerprint)
  training = json.loads(storage.read_text(ep.training))
  return spec, weights, meta, vocab, training
