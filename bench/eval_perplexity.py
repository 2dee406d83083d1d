r"""Perplexity of an exported model on a text file, with the state carried.

  python bench/eval_perplexity.py --model_dir=runs/recipes/ptb_word_small/model \
      --text=../shared/data/ptb/ptb.test.txt

The trainer's validation/test numbers score fixed windows, each starting from
a zero state (as training sees them). Published PTB results (Zaremba et al.
2014 and later) instead run the model over the whole token stream, carrying
the LSTM state from one token to the next. This does the same: the stream is
cut into --streams contiguous pieces decoded in parallel, every token scored
once (the first of each piece from a zero state).
"""

import math
import os
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataspec import export as export_lib  # pylint: disable=wrong-import-position
from dataspec import tokenizer as tokenizer_lib  # pylint: disable=wrong-import-position
from generate import sampling  # pylint: disable=wrong-import-position

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Training model_dir (uses export/).")
_TEXT = flags.DEFINE_string("text", None, "Text file to score.")
_STREAMS = flags.DEFINE_integer("streams", 20, "Pieces decoded in parallel.")
flags.mark_flags_as_required(["model_dir", "text"])


def main(_):
  spec, weights, meta, vocab, _ = export_lib.load_export(os.path.join(_MODEL_DIR.value, "export"))
  tok = tokenizer_lib.Tokenizer(meta.tokenizer_spec, vocab=vocab)
  ids = tok.encode(open(_TEXT.value, encoding="utf-8").read())  # (num_tokens,)
  if meta.tokenizer_spec.type == "word" and meta.tokenizer_spec.line_eos:
    # PTB convention: the stream starts after an <eos>, every token is scored.
    ids = np.concatenate([[tokenizer_lib.EOS_ID], ids])
  length = (len(ids) - 1) // _STREAMS.value
  inputs = ids[:-1][:length * _STREAMS.value].reshape(_STREAMS.value, length)
  targets = ids[1:][:length * _STREAMS.value].reshape(_STREAMS.value, length)
  decoder = sampling.Decoder(spec, weights)

  @tf.function
  def score(inputs, targets):
    states = decoder.zero_state(tf.shape(inputs)[0])
    total = tf.constant(0.0, tf.float64)
    for t in tf.range(tf.shape(inputs)[1]):
      logits, states = decoder._step(inputs[:, t], states)  # pylint: disable=protected-access
      nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets[:, t], logits=logits)
      total += tf.reduce_sum(tf.cast(nll, tf.float64))
    return total

  total = float(score(tf.constant(inputs, tf.int32), tf.constant(targets, tf.int32)))
  count = inputs.size
  loss = total / count
  print(f"{count:,} tokens scored with the state carried: loss {loss:.4f} "
        f"nats/token, perplexity {math.exp(loss):.2f}")


if __name__ == "__main__":
  app.run(main)
