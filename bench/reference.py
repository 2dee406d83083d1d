"""The reference char model the generation and evaluation benches measure:
2x LSTM 256, embedding 64, window 128, the bundled corpus's 68 ids, random
weights (throughput does not depend on them)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "tinyshakespeare.txt")
EMBEDDING, UNITS, LAYERS, WINDOW = 64, 256, 2, 128


def corpus() -> str:
  with open(CORPUS, encoding="utf-8") as f:
    return f.read()


def language_model(text: str, **options):
  """dataspec.serving.LanguageModel of the reference model, its char
  vocabulary counted from text; options: precision, decode_ops."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dataspec import export as export_lib  # pylint: disable=g-import-not-at-top
  from dataspec import serving  # pylint: disable=g-import-not-at-top
  from dataspec import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from dataspec import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  tok_spec = tokenizer_lib.TokenizerSpec(type="char")
  vocab = vocab_lib.select_vocab(
      tokenizer_lib.Tokenizer(tok_spec, vocab=list(tokenizer_lib.RESERVED_TOKENS)).count(text),
      max_vocab_size=0, min_count=1)
  spec = export_lib.ModelSpec(vocab_size=len(vocab), embedding_dim=EMBEDDING, units=UNITS,
                              num_layers=LAYERS, window_length=WINDOW)
  rng = np.random.default_rng(0)
  weights = {name: rng.normal(0, 0.1, shape).astype(np.float32)
             for name, shape in export_lib.weight_shapes(spec).items()}
  return serving.LanguageModel(spec, weights, tok_spec, vocab, **options)
