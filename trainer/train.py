"""run(config): the distributed training loop, evaluation, checkpoints, export."""

import hashlib
import json
import math
import os
import re
import signal
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from dataspec import export as export_lib
from dataspec import metadata as metadata_lib
from dataspec import paths
from dataspec import serving
from dataspec import storage
from dataspec import tf_allocator
from dataspec import vocab as vocab_lib
from trainer import checkpoints
from trainer import cluster
from trainer import data
from trainer import fused_lstm
from trainer import heap
from trainer import model as model_lib
from trainer import optim
from trainer import precision

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what Kubernetes expects
MAX_CHAINED_EPOCHS = 20


class Preempted(SystemExit):
  """Raised after the SIGTERM checkpoint is written."""

  def __init__(self):
    super().__init__(PREEMPTED_EXIT_CODE)


def input_device(worker_devices) -> str:
  """Where a worker's input pipeline and its iterator run: the CPU of the
  host its replica devices are on (GPUs, or logical CPU devices)."""
  spec = tf.DeviceSpec.from_string(worker_devices[0])
  return spec.replace(device_type="CPU", device_index=0).to_string()


def create_strategy(config) -> tf.distribute.Strategy:
  """The tf.distribute strategy named by --strategy."""
  if config.num_cpu_devices:
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * config.num_cpu_devices)
    except RuntimeError:
      if len(tf.config.list_logical_devices("CPU")) != config.num_cpu_devices:
        raise
  if config.strategy == "multi_worker":
    cluster.set_tf_config_from_indexed_job(os.environ)
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy=multi_worker needs TF_CONFIG, or a Kubernetes "
                       "Indexed Job's JOB_COMPLETION_INDEX with TEXTGEN_NUM_WORKERS "
                       "and TEXTGEN_WORKER_HOSTNAME (see trainer/cluster.py)")
    # Must come before anything initializes the TF runtime (listing logical
    # devices would): collective ops are configured at start-up. The timeout
    # bounds every all-reduce, so a worker whose peer froze or was cut off
    # without a TCP reset fails instead of waiting forever.
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=config.collective_timeout or None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  gpus = tf.config.list_logical_devices("GPU")
  if config.strategy == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  if not gpus and len(tf.config.list_logical_devices("CPU")) > 1:
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")])
  return tf.distribute.MirroredStrategy()


# What a collective that lost its peer raises (the peer's task is in the text).
_PEER_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.AbortedError, tf.errors.CancelledError,
                tf.errors.FailedPreconditionError, tf.errors.InternalError)
_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def describe_lost_peer(error: Exception, tf_config: dict) -> str:
  """One line naming the worker(s) an error points at, with their addresses.

  Example:
    >>> describe_lost_peer(Exception("... /job:worker/replica:0/task:1 ..."),
    ...                    {"cluster": {"worker": ["a:1", "b:2"]},
    ...                     "task": {"type": "worker", "index": 0}})
    'Lost contact with worker 1 (b:2) ...'
  """
  cluster_spec = tf_config.get("cluster", {})
  me = tf_config.get("task", {})
  named = []
  for job, index in _TASK.findall(str(error)):
    if (job, int(index)) != (me.get("type"), me.get("index")) and (job, int(index)) not in named:
      named.append((job, int(index)))
  if not named:  # the error does not say: every other worker is a suspect
    named = [(job, i) for job, hosts in cluster_spec.items() for i in range(len(hosts))
             if (job, i) != (me.get("type"), me.get("index"))]
  peers = ", ".join(f"{job} {i} ({cluster_spec.get(job, ['?'] * (i + 1))[i]})"
                    for job, i in named)
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return (f"Lost contact with {peers} ({type(error).__name__}: {first[:300]}). "
          "Restart every worker: they resume from the last checkpoint.")


def is_chief(strategy) -> bool:
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return task_type == "chief" or (not has_chief and task_type == "worker" and task_id == 0)


def _run_fingerprint(meta, spec, config) -> dict:
  model = json.loads(spec.to_json())
  del model["format_version"]  # the export's, not the checkpoint's
  fingerprint = {
      "schema_version": meta.schema_version,
      "tokenizer": meta.tokenizer,
      "vocab_size": meta.vocab_size,
      "vocab_fingerprint": meta.vocab_fingerprint,
      "window_length": meta.window_length,
      "model": model,
      "batch_size": config.batch_size,
      "seed": config.seed,
  }
  if spec.tie_embeddings:
    # Layout 2: tied output by ReversibleEmbedding + output_bias (earlier
    # runs had a custom TiedOutput layer; their checkpoints do not restore).
    fingerprint["checkpoint_layout"] = 2
  return fingerprint


def check_run_matches(run_paths: paths.RunPaths, fingerprint: dict, *, chief: bool):
  """Refuses to resume a model_dir trained on another vocab/schema/model."""
  if storage.exists(run_paths.run_info):
    old = json.loads(storage.read_text(run_paths.run_info))
    old.get("model", {}).pop("format_version", None)  # written by earlier versions
    diffs = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diffs:
      detail = "; ".join(f"{k}: checkpoint has {old.get(k)!r}, now {fingerprint.get(k)!r}"
                         for k in diffs)
      raise ValueError(
          f"--model_dir={run_paths.root} holds a run that does not match this "
          f"--dataset_dir/flags ({detail}). Use a new --model_dir, or the "
          "dataset and flags it was started with.")
  elif chief:
    storage.write_text(run_paths.run_info, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")


class Trainer:
  """Owns the strategy, model, optimizer, data and the loop."""

  def __init__(self, config):
    self.config = config
    storage.check_bucket(config.dataset_dir)
    storage.check_writable(config.model_dir)
    self.meta = metadata_lib.load_dataset_metadata(config.dataset_dir)
    self.vocab = metadata_lib.load_vocab_for(config.dataset_dir, self.meta)
    self.train_files = data.split_files(config.dataset_dir, self.meta, "train")
    has_val = self.meta.splits["validation"].windows > 0
    self.val_files = data.split_files(config.dataset_dir, self.meta, "validation") if has_val else []
    has_test = "test" in self.meta.splits and self.meta.splits["test"].windows > 0
    self.test_files = data.split_files(config.dataset_dir, self.meta, "test") if has_test else []
    self.local_dir = config.local_dir or os.path.join(
        tempfile.gettempdir(), "textgen-" + hashlib.sha256(
            config.model_dir.encode()).hexdigest()[:12])
    if not config.stream_gcs:
      self.train_files = data.stage_files(self.train_files, os.path.join(self.local_dir, "data"))
      self.val_files = data.stage_files(self.val_files, os.path.join(self.local_dir, "data"))
      self.test_files = data.stage_files(self.test_files, os.path.join(self.local_dir, "data"))
    self.strategy = create_strategy(config)
    self.replicas = self.strategy.num_replicas_in_sync
    if config.batch_size % self.replicas:
      raise ValueError(f"--batch_size={config.batch_size} is not divisible by "
                       f"the {self.replicas} replicas")
    self.chief = is_chief(self.strategy)
    self.run_paths = paths.RunPaths(config.model_dir)
    windows = self.meta.splits["train"].windows
    self.steps_per_epoch = windows // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f"--batch_size={config.batch_size} is larger than the "
                       f"{windows} training windows")
    self.total_steps = config.train_steps or config.epochs * self.steps_per_epoch
    self.window_length = self.meta.window_length
    self.spec = model_lib.model_spec_from_config(
        config, vocab_size=self.meta.vocab_size, window_length=self.window_length)
    logging.info("%d replica(s) (%s); global batch %d = %d per replica x %d; "
                 "%d steps per epoch, %d steps in all",
                 self.replicas, type(self.strategy).__name__, config.batch_size,
                 config.batch_size // self.replicas, self.replicas,
                 self.steps_per_epoch, self.total_steps)
    gpus = len(tf.config.list_logical_devices("GPU"))
    self.fused_cpu_lstm = fused_lstm.use_fused_cpu_path(
        gpus=gpus, recurrent_dropout=config.recurrent_dropout)
    logging.info("LSTM layers: %s", "fused CPU path (trainer/fused_lstm.py)"
                 if self.fused_cpu_lstm else "keras.layers.LSTM (cuDNN on GPU)")
    if config.recurrent_dropout and gpus:
      logging.warning("--recurrent_dropout > 0 disables the fused cuDNN LSTM "
                      "kernel: expect several times slower training on GPU")
    self.policy = precision.policy_name(mixed_precision=config.mixed_precision,
                                        dtype=config.mixed_precision_dtype, gpus=gpus)
    precision.warn_if_slow(self.policy, gpus=gpus)
    self.loss_scaling = self.policy == "mixed_float16"  # Keras's, for float16
    if config.mixed_precision:
      logging.info("Mixed precision: Keras policy %s", self.policy)
      keras.mixed_precision.set_global_policy(self.policy)
    keras.utils.set_random_seed(config.seed)
    with self.strategy.scope():
      self.model = model_lib.build_model(
          spec=self.spec, dropout=config.dropout,
          embedding_dropout=config.embedding_dropout,
          recurrent_dropout=config.recurrent_dropout, seed=config.seed,
          fused_cpu_lstm=self.fused_cpu_lstm)
      self.optimizer, self.lr_schedule = optim.build_optimizer(
          config, total_steps=self.total_steps,
          loss_scaling=self.loss_scaling)
      self.optimizer.build(self.model.trainable_variables)
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
      self.best_val_loss = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
      self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                               step=self.step, best_val_loss=self.best_val_loss,
                               evals_since_best=self.evals_since_best)
    self.store = checkpoints.CheckpointStore(
        directory=self.run_paths.checkpoints, checkpoint=ckpt,
        keep=config.keep_checkpoints, is_chief=self.chief)
    best_ckpt = tf.train.Checkpoint(model=self.model)
    self.best_store = checkpoints.CheckpointStore(
        directory=storage.join(self.run_paths.checkpoints, "best"),
        checkpoint=best_ckpt, keep=1, is_chief=self.chief)
    self._stop_requested = False
    self.preemption = None  # multi_worker: a PreemptionCheckpointHandler
    self._eval_iterators = {}  # split -> its iterator, for every evaluation
    self._local_replicas = len(self.strategy.extended.worker_devices)
    self._input_device = input_device(self.strategy.extended.worker_devices)
    self._build_functions()

  # ---- compiled steps ---------------------------------------------------

  def _build_functions(self):
    strategy, model, optimizer = self.strategy, self.model, self.optimizer
    global_batch, length = self.config.batch_size, self.window_length
    clip = self.config.clip_norm
    replicas = float(self.replicas)
    loss_scaling = self.loss_scaling
    per_replica = self._per_replica

    def token_stats(targets, logits):
      per_token = keras.losses.sparse_categorical_crossentropy(
          targets, logits, from_logits=True)  # (batch, L)
      correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32)
      return per_token, tf.reduce_sum(correct)

    def train_step(batch):
      inputs, targets = batch  # (batch, L) each
      with tf.GradientTape() as tape:
        logits = model(inputs, training=True)  # (batch, L, vocab)
        per_token, correct = token_stats(targets, logits)
        loss = tf.reduce_sum(per_token) / float(global_batch * length)
        scaled = optimizer.scale_loss(loss) if loss_scaling else loss
      variables = model.trainable_variables
      grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]
      # Clip the global norm of the *summed* gradient: all-reduce here, then
      # divide by the replica count because the optimizer sums replicas again.
      ctx = tf.distribute.get_replica_context()
      grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
      norm = tf.linalg.global_norm(grads)
      if loss_scaling:
        norm = norm / tf.cast(optimizer.dynamic_scale, norm.dtype)
      factor = tf.minimum(1.0, clip / (norm + 1e-6)) if clip else 1.0
      grads = [g * (factor / replicas) for g in grads]
      optimizer.apply_gradients(zip(grads, variables))
      count = tf.cast(tf.size(targets), tf.float32)
      return tf.reduce_sum(per_token), correct, count, norm

    @tf.function
    def train_loop(iterator, num_steps):
      totals = [tf.constant(0.0)] * 4
      for _ in tf.range(num_steps):
        out = strategy.run(train_step, args=(per_replica(next(iterator)),))
        out = [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out[:3]] + [
            strategy.reduce(tf.distribute.ReduceOp.MEAN, out[3], axis=None)]
        totals = [t + v for t, v in zip(totals, out)]
      return totals

    def eval_step(batch):
      inputs, targets = batch
      logits = model(inputs, training=False)
      per_token, correct = token_stats(targets, logits)
      return tf.reduce_sum(per_token), correct, tf.cast(tf.size(targets), tf.float32)

    @tf.function
    def eval_loop(iterator, num_steps):
      totals = [tf.constant(0.0)] * 3
      for _ in tf.range(num_steps):
        out = strategy.run(eval_step, args=(per_replica(next(iterator)),))
        totals = [t + strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                  for t, v in zip(totals, out)]
      return totals

    self._train_loop = train_loop
    self._eval_loop = eval_loop

  # ---- data --------------------------------------------------------------

  def _per_replica(self, batches):
    """The next element of an iterator of _iterate as the batch of each of
    this worker's replicas: with several, the first to its first replica,
    and so on. Replica ids count over all workers, a worker's in a row
    (MultiWorkerMirroredStrategy: worker x local replicas + local index),
    so the remainder is the local index. MultiWorkerMirroredStrategy has
    several replicas per worker only with GPUs, which no test here has."""
    local = self._local_replicas
    if local == 1:
      return batches
    def value(ctx):
      with tf.device(self._input_device):
        return tuple(t[ctx.replica_id_in_sync_group % local] for t in batches)
    return self.strategy.experimental_distribute_values_from_function(value)

  def _train_iterator(self, step: int):
    """(iterator from `step` on, the step where it runs out)."""
    epoch, offset = divmod(step, self.steps_per_epoch)
    # Epochs are chained in one dataset, so new iterators are rare (each
    # new tf.distribute iterator retraced the step function, about 30 s on
    # 2 cores; the dataset's own does not), but not too many: a very long
    # chain is slow to build.
    num_epochs = min(MAX_CHAINED_EPOCHS,
                     -(-(self.total_steps - step + offset) // self.steps_per_epoch))
    def fn(ctx):
      return data.make_train_dataset(
          ctx, files=self.train_files, meta=self.meta,
          global_batch_size=self.config.batch_size, seed=self.config.seed,
          start_epoch=epoch, skip_batches=offset,
          steps_per_epoch=self.steps_per_epoch,
          num_epochs=num_epochs, shuffle_buffer=self.config.shuffle_buffer)
    end = (epoch + num_epochs) * self.steps_per_epoch
    return self._iterate(fn), end

  def _iterate(self, dataset_fn):
    """An iterator over this worker's batches, `dataset_fn(input_context)`.

    The iterator of the dataset itself, on the host's CPU, with the input
    context tf.distribute gives. With several replicas per worker (GPUs,
    --num_cpu_devices) it yields their batches stacked, one per replica,
    and _per_replica hands them out: the same batches to the same replicas
    as tf.distribute's iterator, which deals a pipeline's batches out in
    turn to the worker's devices. A batch then reaches its GPU inside the
    step: 2 x 256 x 128 int32 is 256 KB, tens of microseconds against a
    step of about 100 ms (docs/scaling.md).

    tf.distribute's iterator is not used: its per-device iterators keep
    tf.data's autotuning (their options are not ours to set, see
    data.without_autotuning), and their teardown waited for autotuning's
    thread. A finished run's process exited 20-34 s after its last log line
    (600 steps, one CPU, three runs, 2026-12-03) and 2.5-54 s with 2 CPU
    devices (three runs); 0.6-1.2 s with the dataset's own iterator, with
    the same losses to the last digit and the same speed.
    """
    datasets = []
    def make(ctx):
      datasets.append(dataset_fn(ctx))
      return datasets[-1]
    self.strategy.distribute_datasets_from_function(make)  # calls make
    dataset = datasets[0]
    if self._local_replicas > 1:
      dataset = dataset.batch(self._local_replicas, drop_remainder=True)
    with tf.device(self._input_device):
      return iter(dataset)

  def evaluate(self, split: str = "validation") -> dict:
    """Loss, perplexity and accuracy on `split` ({} if it has no windows)."""
    files = {"validation": self.val_files, "test": self.test_files}[split]
    if not files:
      return {}
    windows = self.meta.splits[split].windows
    steps = max(1, windows // self.config.batch_size)
    if self.config.eval_steps and split == "validation":
      steps = min(steps, self.config.eval_steps)
    if split not in self._eval_iterators:  # kept: see data.make_eval_dataset
      def fn(ctx):
        return data.make_eval_dataset(ctx, files=files, meta=self.meta,
                                      global_batch_size=self.config.batch_size, steps=steps)
      self._eval_iterators[split] = self._iterate(fn)
    loss_sum, correct, count = [float(v) for v in self._eval_loop(
        self._eval_iterators[split], tf.constant(steps))]
    loss = loss_sum / count
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50)),
              "accuracy": correct / count}
    stats = self.meta.splits[split]
    if stats.bytes and stats.tokens:
      # Bits per UTF-8 byte, the unit that compares tokenizers: the windows'
      # mean loss per token times the split's tokens per byte.
      result["bits_per_byte"] = loss / math.log(2) * stats.tokens / stats.bytes
    return result

  # ---- the loop ------------------------------------------------------------

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: checkpointing at the next step boundary%s",
                    " (all workers, at one step)" if self.preemption else "")
    self._stop_requested = True

  def _make_preemption_handler(self):
    """multi_worker: TensorFlow's PreemptionCheckpointHandler. A SIGTERM to
    any worker makes every worker save one checkpoint at the same step and
    exit with PREEMPTED_EXIT_CODE: the worker that got it announces a step
    through the coordination service, every worker acknowledges, trains to
    that step and saves. Our SIGTERM flag is its termination watcher (on
    every platform, also GCE, where it would otherwise poll GCE maintenance
    events), grace period 0 (save at once: a pod gets ~30 s)."""
    def save():
      step = int(self.step.numpy())
      self.store.save(step)
      self.store.wait()
      logging.warning("Preempted at step %d: every worker saved a checkpoint", step)

    def leave():
      raise Preempted()

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        self.strategy.cluster_resolver, self.store.manager,
        termination_config=tf.distribute.experimental.TerminationConfig(
            termination_watcher_fn=lambda: self._stop_requested, exit_fn=leave,
            grace_period=0, save_fn=save))

  def _tensorboard_dir(self) -> str:
    """Where event files are written: model_dir/tensorboard, or a local
    mirror of it for gs:// (uploaded by _sync_tensorboard)."""
    tb = self.run_paths.tensorboard
    return os.path.join(self.local_dir, "tensorboard") if storage.is_gcs(tb) else tb

  def _writers(self):
    if not self.chief:
      return tf.summary.create_noop_writer(), tf.summary.create_noop_writer()
    tb = self._tensorboard_dir()
    return (tf.summary.create_file_writer(os.path.join(tb, "train")),
            tf.summary.create_file_writer(os.path.join(tb, "validation")))

  def _sync_tensorboard(self, *writers):
    for w in writers:
      w.flush()
    if not (self.chief and storage.is_gcs(self.run_paths.tensorboard)):
      return
    local = self._tensorboard_dir()
    for root, _, names in os.walk(local):
      for name in names:
        path = os.path.join(root, name)
        rel = os.path.relpath(path, local).replace(os.sep, "/")
        storage.upload_file(path, storage.join(self.run_paths.tensorboard, rel))

  def run(self) -> dict:
    config = self.config
    check_run_matches(self.run_paths, _run_fingerprint(self.meta, self.spec, config),
                      chief=self.chief)
    if self.chief:
      storage.write_text(self.run_paths.config,
                         json.dumps(config.to_json_dict(), indent=2) + "\n")
    restored = self.store.restore_latest()
    if restored is not None:
      logging.info("Resuming at step %d of %d", int(self.step.numpy()), self.total_steps)
    elif config.unigram_bias_tokens and not config.export_only:
      self._init_output_bias()
    if config.export_only:
      if restored is None:
        raise ValueError(f"--export_only: no checkpoint in {self.run_paths.checkpoints}")
      return self.export({"step": int(self.step.numpy())})
    previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    try:
      if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # After the restore above: its own restore finds nothing new.
        self.preemption = self._make_preemption_handler()
      result = self._loop()
    except _PEER_ERRORS as err:
      if self.preemption is None:
        raise
      logging.error("%s", describe_lost_peer(err, json.loads(os.environ.get("TF_CONFIG", "{}"))))
      raise
    finally:
      signal.signal(signal.SIGTERM, previous)
      self.store.wait()
      self.best_store.wait()
    return self.export(result)

  def _init_output_bias(self):
    """Output bias := log unigram probabilities, so step 0 already predicts
    word frequencies (the loss starts at the unigram entropy, not log V)."""
    start = time.time()
    log_probs = data.unigram_log_probs(self.train_files, self.meta,
                                       max_tokens=self.config.unigram_bias_tokens)
    model_lib.set_output_bias(self.model, log_probs)
    entropy = -float(np.sum(np.exp(log_probs) * log_probs))
    logging.info("Output bias set to the log unigram distribution (entropy %.3f "
                 "nats, perplexity %.1f) in %.1f s", entropy, math.exp(entropy),
                 time.time() - start)

  def _loop(self) -> dict:
    config = self.config
    train_writer, val_writer = self._writers()
    eval_every = config.eval_every or self.steps_per_epoch
    step = int(self.step.numpy())
    last_eval = {}
    iterator, iterator_end = self._train_iterator(step)
    start_time, start_step = time.time(), step
    window_time, window_steps = time.time(), 0
    totals = np.zeros(4)
    while step < self.total_steps:
      if step >= iterator_end:
        iterator, iterator_end = self._train_iterator(step)
      boundary = min(self.total_steps, iterator_end,
                     (step // config.log_every + 1) * config.log_every,
                     (step // config.checkpoint_every + 1) * config.checkpoint_every,
                     (step // eval_every + 1) * eval_every)
      num = boundary - step
      out = self._train_loop(iterator, tf.constant(num))
      step = boundary
      self.step.assign(step)
      totals[:3] += [float(v) for v in out[:3]]
      totals[3] += float(out[3]) * num
      window_steps += num
      if step % config.log_every == 0 or step == self.total_steps:
        self._log_progress(step, totals, window_steps, window_time, start_time,
                           start_step, train_writer)
        totals[:] = 0
        window_time, window_steps = time.time(), 0
      if step % eval_every == 0 or step == self.total_steps:
        last_eval = self._evaluate_and_track(step, val_writer)
        if self._should_stop_early():
          logging.info("Early stopping at step %d: no better validation loss in "
                       "%d evaluations", step, config.early_stopping_patience)
          self.store.save(step)
          break
      if step % config.checkpoint_every == 0 or step == self.total_steps:
        self.store.save(step)
        self._sync_tensorboard(train_writer, val_writer)
      if self.preemption is not None:
        self.preemption.save_checkpoint_if_preempted()  # may save and exit
      elif self._stop_requested:
        self.store.save(step)
        self.store.wait()
        logging.warning("Preempted at step %d; checkpoint saved, exiting", step)
        raise Preempted()
    self._sync_tensorboard(train_writer, val_writer)
    return {"step": step, "validation": last_eval,
            "best_validation_loss": float(self.best_val_loss.numpy())}

  def _log_progress(self, step, totals, window_steps, window_time, start_time,
                    start_step, writer):
    loss_sum, correct, count, norm_sum = totals
    loss = loss_sum / max(count, 1)
    elapsed = max(time.time() - window_time, 1e-9)
    steps_per_s = window_steps / elapsed
    tokens_per_s = count / elapsed
    rate = (step - start_step) / max(time.time() - start_time, 1e-9)
    eta = (self.total_steps - step) / max(rate, 1e-9)
    lr = float(self.lr_schedule(step))
    logging.info("step %d/%d (epoch %d) loss %.4f ppl %.2f acc %.3f | "
                 "%.2f steps/s %s tokens/s | lr %.2e grad-norm %.2f | ETA %s",
                 step, self.total_steps, step // self.steps_per_epoch + 1, loss,
                 math.exp(min(loss, 50)), correct / max(count, 1), steps_per_s,
                 f"{tokens_per_s:,.0f}", lr, norm_sum / max(window_steps, 1),
                 _format_seconds(eta))
    with writer.as_default(step=step):
      tf.summary.scalar("loss", loss)
      tf.summary.scalar("perplexity", math.exp(min(loss, 50)))
      tf.summary.scalar("accuracy", correct / max(count, 1))
      tf.summary.scalar("tokens_per_second", tokens_per_s)
      tf.summary.scalar("learning_rate", lr)

  def _evaluate_and_track(self, step, writer) -> dict:
    result = self.evaluate()
    if not result:
      return result
    logging.info("step %d validation loss %.4f ppl %.2f acc %.3f%s", step,
                 result["loss"], result["perplexity"], result["accuracy"],
                 f" bits/byte {result['bits_per_byte']:.4f}"
                 if "bits_per_byte" in result else "")
    with writer.as_default(step=step):
      for k, v in result.items():
        tf.summary.scalar(k, v)
    if result["loss"] < float(self.best_val_loss.numpy()):
      self.best_val_loss.assign(result["loss"])
      self.evals_since_best.assign(0)
      self.best_store.save(step)
    else:
      self.evals_since_best.assign_add(1)
    return result

  def _should_stop_early(self) -> bool:
    patience = self.config.early_stopping_patience
    return bool(patience) and int(self.evals_since_best.numpy()) >= patience

  # ---- export ----------------------------------------------------------------

  def export(self, result: dict) -> dict:
    """Writes export/ (the best validation checkpoint if there is one)."""
    best_step = self.best_store.restore_latest()
    result = dict(result, exported_step=(
        best_step if best_step is not None else int(self.step.numpy())))
    if self.test_files:
      result["test"] = self.evaluate("test")
      logging.info("Test (step %d): loss %.4f perplexity %.2f", result["exported_step"],
                   result["test"]["loss"], result["test"]["perplexity"])
    if not self.chief:
      return result
    ep = self.run_paths.export
    storage.delete(ep.completed)
    weights = model_lib.export_weights(self.model, self.spec)
    export_lib.write_weights(ep.weights, weights)
    storage.write_text(ep.model_config, self.spec.to_json())
    storage.write_text(ep.metadata, self.meta.to_json())
    vocab_lib.write_for(ep, self.meta.tokenizer_spec, self.vocab)
    self._export_models(ep, weights)
    training = dict(result, config=self.config.to_json_dict(),
                    replicas=self.replicas, steps_per_epoch=self.steps_per_epoch)
    storage.write_text(ep.training, json.dumps(training, indent=2, default=float) + "\n")
    storage.write_text(ep.completed, "ok\n")
    logging.info("Exported %s (step %d)", ep.root, result["exported_step"])
    return result


  def _export_models(self, ep: paths.ExportPaths, weights):
    """export/saved_model/ (text in, text out) and export/model.keras,
    written locally and then copied file by file (gs:// too)."""
    start = time.time()
    storage.delete_dir(ep.saved_model)
    with tempfile.TemporaryDirectory(prefix="textgen-export-") as tmp:
      serving.save(os.path.join(tmp, "saved_model"), serving.LanguageModel(
          self.spec, weights, self.meta.tokenizer_spec, self.vocab))
      config = self.config
      model_lib.export_keras_model(
          os.path.join(tmp, "model.keras"), spec=self.spec, weights=weights,
          dropout=config.dropout, embedding_dropout=config.embedding_dropout,
          recurrent_dropout=config.recurrent_dropout, seed=config.seed)
      storage.upload_file(os.path.join(tmp, "model.keras"), ep.keras_model)
      local = os.path.join(tmp, "saved_model")
      for root, _, names in os.walk(local):
        for name in names:
          rel = os.path.relpath(os.path.join(root, name), local).replace(os.sep, "/")
          storage.upload_file(os.path.join(root, name), storage.join(ep.saved_model, rel))
    logging.info("Wrote %s and %s in %.1f s", ep.saved_model, ep.keras_model,
                 time.time() - start)


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def run(config) -> dict:
  logging.info("The config:\n%s", json.dumps(config.to_json_dict(), indent=2))
  heap.keep_freed_memory()
  tf_allocator.use_bfc_allocator()  # before any op
  trainer = Trainer(config)
  try:
    return trainer.run()
  finally:
    trainer.store.close()
    trainer.best_store.close()
    tf_allocator.log_peak()
