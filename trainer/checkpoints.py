"""Checkpoints in a local directory or in object storage (gs://).

Local model_dir: a tf.train.CheckpointManager writes straight into
model_dir/checkpoints. TensorFlow writes the `checkpoint` index file last,
atomically, so a process killed mid-save leaves the previous checkpoint as the
latest and the partial files are never read.

gs:// model_dir: the manager saves into a local staging directory (fast, so
training stalls only for the local write); a background thread uploads the
checkpoint's files and then writes the small marker object
`ckpt-<step>.COMMITTED` last. Restore picks the highest step that has a
marker, so a process killed mid-upload resumes from the previous complete
checkpoint. At most one upload runs at a time; the next save waits for it.

Under MultiWorkerMirroredStrategy every worker must save; workers other than
the chief save into a private scratch directory that is then deleted.
"""

import concurrent.futures
import json
import os
import re
import shutil
import tempfile
from typing import Optional

from absl import logging
import tensorflow as tf

from dataspec import storage

_MARKER = re.compile(r"ckpt-(\d+)\.COMMITTED$")


class CheckpointStore:
  """Saves and restores `checkpoint` under `directory` (local or gs://).

  Args:
    directory: where checkpoints live (e.g. model_dir/checkpoints).
    checkpoint: the tf.train.Checkpoint to save/restore.
    keep: how many checkpoints to keep.
    is_chief: only the chief writes to `directory`.
  """

  def __init__(self, *, directory: str, checkpoint: tf.train.Checkpoint,
               keep: int, is_chief: bool = True):
    self.directory = directory
    self._checkpoint = checkpoint
    self._keep = keep
    self._is_chief = is_chief
    self._remote = storage.is_gcs(directory)
    self._pending: Optional[concurrent.futures.Future] = None
    self._executor = None
    if self._remote or not is_chief:
      self._staging = tempfile.mkdtemp(prefix="textgen-ckpt-")
    else:
      self._staging = directory
    if self._remote and is_chief:
      self._executor = concurrent.futures.ThreadPoolExecutor(1, "ckpt-upload")
    self._manager = tf.train.CheckpointManager(
        checkpoint, directory=self._staging, max_to_keep=keep,
        checkpoint_name="ckpt")

  @property
  def manager(self) -> tf.train.CheckpointManager:
    """The manager that writes this worker's checkpoints (the directory
    itself on a local chief; a staging directory otherwise)."""
    return self._manager

  # ---- reading ---------------------------------------------------------

  def committed_steps(self):
    """Steps of complete checkpoints, ascending."""
    if self._remote:
      steps = []
      for path in storage.list_dir(self.directory):
        m = _MARKER.search(path)
        if m:
          steps.append(int(m.group(1)))
      return sorted(steps)
    latest = tf.train.get_checkpoint_state(self.directory)
    if latest is None:
      return []
    return sorted(int(p.rsplit("-", 1)[1]) for p in latest.all_model_checkpoint_paths)

  def latest_step(self) -> Optional[int]:
    steps = self.committed_steps()
    return steps[-1] if steps else None

  def restore_latest(self) -> Optional[int]:
    """Restores the newest complete checkpoint; returns its step or None."""
    step = self.latest_step()
    if step is None:
      return None
    if self._remote:
      marker = json.loads(storage.read_text(
          storage.join(self.directory, f"ckpt-{step}.COMMITTED")))
      local_dir = tempfile.mkdtemp(prefix="textgen-restore-")
      for name in marker["files"]:
        storage.download_file(storage.join(self.directory, name),
                              os.path.join(local_dir, name))
      path = os.path.join(local_dir, f"ckpt-{step}")
    else:
      path = os.path.join(self.directory, f"ckpt-{step}")
    self._checkpoint.restore(path).assert_existing_objects_matched()
    logging.info("Restored checkpoint %s", storage.join(self.directory, f"ckpt-{step}"))
    return step

  # ---- writing ---------------------------------------------------------

  def save(self, step: int):
    """Saves a checkpoint for `step` (uploads in the background on gs://)."""
    self.wait()
    path = self._manager.save(checkpoint_number=step)
    if not self._is_chief:
      return
    if self._remote:
      self._pending = self._executor.submit(self._upload, path, step)
    else:
      logging.info("Saved checkpoint %s", path)

  def _upload(self, local_path: str, step: int):
    prefix = os.path.basename(local_path)
    names = sorted(n for n in os.listdir(self._staging)
                   if n.startswith(prefix + ".") or n == prefix)
    for name in names:
      storage.upload_file(os.path.join(self._staging, name),
                          storage.join(self.directory, name))
    # The marker is written last: its presence means every file is there.
    storage.write_text(storage.join(self.directory, f"ckpt-{step}.COMMITTED"),
                       json.dumps({"step": step, "files": names}) + "\n")
    logging.info("Uploaded checkpoint %s", storage.join(self.directory, prefix))
    self._prune_remote()

  def _prune_remote(self):
    steps = self.committed_steps()
    for old in steps[:-self._keep]:
      # The marker goes first, so a half-deleted checkpoint is never chosen.
      storage.delete(storage.join(self.directory, f"ckpt-{old}.COMMITTED"))
      for path in storage.list_dir(self.directory):
        if re.search(rf"/ckpt-{old}\.(index|data-.*)$", path):
          storage.delete(path)

  def wait(self):
    """Blocks until the last upload finished; re-raises its error."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      pending.result()

  def close(self):
    self.wait()
    if self._executor:
      self._executor.shutdown()
    if self._staging != self.directory:
      shutil.rmtree(self._staging, ignore_errors=True)
