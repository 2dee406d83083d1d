"""File names inside a dataset directory, a training run and an export.

  dataset_dir/                      written by beam_preprocess
    train-00000-of-00004.tfrecord.gz
    validation-00000-of-00001.tfrecord.gz
    test-....tfrecord.gz              only with --test_input
    validation-documents.jsonl      byte ranges of the documents in the split
    test-documents.jsonl            (held-out splits; what textgen-eval scores)
    vocab.txt  metadata.json  config.json
    tokenizer.model                 bpe/unigram: the SentencePiece model
                                    (instead of vocab.txt)
    COMPLETED                       written last; holds metadata.json's sha256
  model_dir/                        written by trainer
    run.json                        dataset fingerprint, fixed at the first start
    config.json
    checkpoints/                    ckpt-<step>.* and the `checkpoint` index
    tensorboard/train, tensorboard/validation
    export/                         everything generate and eval need
      model_config.json  weights.npz  vocab.txt (or tokenizer.model)
      metadata.json  training.json
      saved_model/                  TensorFlow SavedModel (dataspec.serving)
      model.keras                   the training model, Keras's own format
      EXPORTED                      written last
"""

import dataclasses

from dataspec import storage

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DatasetPaths:
  root: str

  @property
  def vocab(self) -> str:
    return storage.join(self.root, "vocab.txt")

  @property
  def tokenizer_model(self) -> str:
    return storage.join(self.root, "tokenizer.model")

  @property
  def metadata(self) -> str:
    return storage.join(self.root, "metadata.json")

  @property
  def config(self) -> str:
    return storage.join(self.root, "config.json")

  @property
  def completed(self) -> str:
    return storage.join(self.root, "COMPLETED")

  def documents(self, split: str) -> str:
    """The byte ranges of the documents in a held-out split (JSONL)."""
    return storage.join(self.root, f"{split}-documents.jsonl")

  def shard_prefix(self, split: str) -> str:
    return storage.join(self.root, split)

  def shard(self, name: str) -> str:
    return storage.join(self.root, name)


@dataclasses.dataclass(frozen=True)
class ExportPaths:
  root: str

  @property
  def model_config(self) -> str:
    return storage.join(self.root, "model_config.json")

  @property
  def weights(self) -> str:
    return storage.join(self.root, "weights.npz")

  @property
  def vocab(self) -> str:
    return storage.join(self.root, "vocab.txt")

  @property
  def tokenizer_model(self) -> str:
    return storage.join(self.root, "tokenizer.model")

  @property
  def metadata(self) -> str:
    return storage.join(self.root, "metadata.json")

  @property
  def training(self) -> str:
    return storage.join(self.root, "training.json")

  @property
  def saved_model(self) -> str:
    return storage.join(self.root, "saved_model")

  @property
  def keras_model(self) -> str:
    return storage.join(self.root, "model.keras")

  @property
  def completed(self) -> str:
    return storage.join(self.root, "EXPORTED")


@dataclasses.dataclass(frozen=True)
class RunPaths:
  root: str

  @property
  def run_info(self) -> str:
    return storage.join(self.root, "run.json")

  @property
  def config(self) -> str:
    return storage.join(self.root, "config.json")

  @property
  def checkpoints(self) -> str:
    return storage.join(self.root, "checkpoints")

  @property
  def tensorboard(self) -> str:
    return storage.join(self.root, "tensorboard")

  @property
  def export(self) -> ExportPaths:
    return ExportPaths(storage.join(self.root, "export"))
