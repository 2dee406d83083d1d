"""Optimizer and learning-rate schedule."""

import math

import keras
import tensorflow as tf


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up to `peak`, then constant, cosine or linear decay.

  Example (peak 1.0, 10 warm-up steps, cosine over 110 steps, floor 0.1):
    step 0 -> 0.0, step 5 -> 0.5, step 10 -> 1.0, step 60 -> 0.55, 110 -> 0.1
  """

  def __init__(self, *, peak: float, warmup_steps: int, total_steps: int,
               schedule: str, floor_ratio: float):
    super().__init__()
    self.peak = peak
    self.warmup_steps = warmup_steps
    self.total_steps = max(total_steps, warmup_steps + 1)
    self.schedule = schedule
    self.floor_ratio = floor_ratio

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warm = float(max(self.warmup_steps, 1))
    warmup = self.peak * tf.minimum(step / warm, 1.0) if self.warmup_steps else self.peak
    progress = tf.clip_by_value((step - self.warmup_steps) /
                                float(self.total_steps - self.warmup_steps), 0.0, 1.0)
    if self.schedule == "cosine":
      decay = 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif self.schedule == "linear":
      decay = 1.0 - progress
    else:
      decay = tf.constant(1.0)
    decayed = self.peak * (self.floor_ratio + (1.0 - self.floor_ratio) * decay)
    if self.schedule == "constant":
      decayed = tf.constant(self.peak, tf.float32)
    return tf.where(step < self.warmup_steps, warmup, decayed)

  def get_config(self):
    return {"peak": self.peak, "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps, "schedule": self.schedule,
            "floor_ratio": self.floor_ratio}


def build_optimizer(config, *, total_steps: int, loss_scaling: bool = False):
  """Returns (optimizer, schedule): Adam or AdamW on the schedule; clipping is done by the train step (on
  the all-reduced gradients), not by the optimizer (which would clip each
  replica's share). loss_scaling: wrapped in Keras's LossScaleOptimizer (for
  float16, whose small gradients would underflow)."""
  lr = WarmupDecay(peak=config.learning_rate, warmup_steps=config.warmup_steps,
                   total_steps=total_steps, schedule=config.schedule,
                   floor_ratio=config.min_learning_rate_ratio)
  if config.optimizer == "adamw":
    opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=config.weight_decay)
  else:
    opt = keras.optimizers.Adam(learning_rate=lr)
  if loss_scaling:
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt, lr
