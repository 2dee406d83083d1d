"""One worker of the multi-worker tests: trains, then saves its weights.

  mw_worker.py DATASET_DIR MODEL_DIR OUT.npz ['{"train_steps": 6, ...}']

The JSON holds TrainConfig fields that override the defaults below. Exits as
the trainer does: 143 when preempted, non-zero on a lost peer.
"""

import json
import os
import sys

from absl import logging
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainer import config as config_lib  # pylint: disable=wrong-import-position
from trainer import train  # pylint: disable=wrong-import-position


def main(dataset_dir, model_dir, out, overrides="{}"):
  logging.set_verbosity(logging.INFO)
  settings = dict(embedding_dim=16, units=32, num_layers=1, batch_size=16, train_steps=6,
                  log_every=3, checkpoint_every=3, eval_every=6, learning_rate=1e-2)
  settings.update(json.loads(overrides))
  config = config_lib.TrainConfig(dataset_dir=dataset_dir, model_dir=model_dir,
                                  strategy="multi_worker", **settings)
  trainer = train.Trainer(config)
  assert trainer.replicas == 2, trainer.replicas
  try:
    trainer.run()
  finally:
    trainer.store.close()
    trainer.best_store.close()
  np.savez(out, *[w.numpy() for w in trainer.model.weights])


if __name__ == "__main__":
  main(*sys.argv[1:])
