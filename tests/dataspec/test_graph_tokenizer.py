"""The in-graph tokenizer (what the SavedModel runs) gives exactly the ids
and text of dataspec.tokenizer, for every tokenizer option combination, on
the bundled corpus and on random Unicode text."""

import itertools
import random
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from dataspec import graph_tokenizer as G
from dataspec import subword
from dataspec import tokenizer as T
from dataspec import vocab as V
from testutil import shakespeare_text

_ASSIGNED = [c for c in range(0x110000)
             if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"]
# Characters where the tokenizer's rules have edges: sigma in and out of
# final position (with case-ignorable characters around it), characters whose
# lowercase is longer ("İ"), combining marks in and out of canonical order,
# Hangul jamo, compatibility forms, digits of other scripts, numbers with
# separators, CR LF, NUL, punctuation, and characters added in Unicode 14
# (which TensorFlow's own ICU lowercases differently).
_EDGES = ("ΣσςİIıΣ.Σ'\u0345Σa\u00adΣ:Σ\r\n\n\t \x00\u0301e\u0301\u0327\u0323"
          "\ufb01\u2460²½١٢٣1,000.5- .,;!?\"'()\u1100\u1161\u11a8\uac00ꟁⱟ\u0b47\u0b3e")


def _random_text(rng: random.Random, length: int) -> str:
  out = []
  for _ in range(length):
    r = rng.random()
    if r < 0.35:
      out.append(rng.choice("abcdefghij ABCDΣ  \n,.!0123"))
    elif r < 0.65:
      out.append(rng.choice(_EDGES))
    else:
      out.append(chr(rng.choice(_ASSIGNED)))
  return "".join(out)


def _all_specs():
  yield T.TokenizerSpec(type="byte")
  for norm, lower in itertools.product(T.NORMALIZATIONS, (False, True)):
    yield T.TokenizerSpec(type="char", normalization=norm, lowercase=lower)
  for norm, lower, punct, numbers, eos in itertools.product(
      T.NORMALIZATIONS, (False, True), T.PUNCTUATION_MODES, T.NUMBER_MODES, (False, True)):
    yield T.TokenizerSpec(type="word", normalization=norm, lowercase=lower,
                          punctuation=punct, numbers=numbers, line_eos=eos)
  for kind, norm, lower in itertools.product(("bpe", "unigram"), ("nfc", "none"),
                                             (False, True)):
    yield T.TokenizerSpec(type=kind, normalization=norm, lowercase=lower)


SPECS = list(_all_specs())
RNG = random.Random(12)
RANDOM_TEXTS = [_random_text(RNG, RNG.randint(0, 400)) for _ in range(60)] + ["", " ", "\n"]
CORPUS = shakespeare_text(60_000)


def _vocab_for(spec):
  """A vocabulary from the corpus and half the random texts, so the other
  half holds unknown tokens too."""
  if not spec.uses_vocab:
    return None
  if spec.is_subword:
    counts = T.make_counter(spec)(CORPUS + "".join(RANDOM_TEXTS[::4]))
    # The rarest 2% of characters are bytes (byte fallback is tested).
    return subword.train_model(counts, model_type=spec.type, vocab_size=800,
                               character_coverage=0.98)
  counts = T.Tokenizer(spec, vocab=list(T.RESERVED_TOKENS)).count(
      CORPUS + "".join(RANDOM_TEXTS[::2]))
  return V.select_vocab(counts, max_vocab_size=400 if spec.type == "word" else 0,
                        min_count=1)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(
    str(v) for v in s.to_json_dict().values()))
def test_graph_tokenizer_equals_the_python_tokenizer(spec):
  vocab = _vocab_for(spec)
  py = T.Tokenizer(spec, vocab=vocab)
  graph = G.GraphTokenizer(spec, vocab)
  texts = RANDOM_TEXTS + [CORPUS]
  encoded = graph.encode(tf.constant([t.encode("utf-8") for t in texts]))
  for text, ids in zip(texts, encoded):
    assert ids.numpy().tolist() == py.encode(text).tolist(), (spec, text[:60])
  # normalized in Python first (textgen-generate), none in the graph
  prepared = graph.encode(tf.constant([T.encoding_text(t, spec).encode("utf-8")
                                       for t in RANDOM_TEXTS]), normalized=True)
  for text, ids in zip(RANDOM_TEXTS, prepared):
    assert ids.numpy().tolist() == py.encode(text).tolist(), (spec, text[:60])
  # decode, and decode of arbitrary ids (reserved ones too)
  rng = np.random.default_rng(0)
  arbitrary = [rng.integers(0, graph.vocab_size, size=n).astype(np.int32)
               for n in (0, 1, 5, 50)]
  rows = [ids.numpy() for ids in encoded] + arbitrary
  decoded = graph.decode(tf.ragged.constant(rows, dtype=tf.int32, ragged_rank=1))
  for ids, text in zip(rows, decoded.numpy()):
    assert text.decode("utf-8") == py.decode(ids), (spec, ids[:20])
  # decoding one id at a time (what generation does for stop strings)
  ids = np.concatenate(arbitrary)
  line_start = tf.ones([1], tf.bool)
  pieces = b""
  for i in ids:
    piece, line_start = graph.piece(tf.constant([i], tf.int32), line_start)
    pieces += piece.numpy()[0]
  assert pieces.decode("utf-8", errors="replace") == py.decode(ids)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_subword_continuation_keeps_its_leading_space(kind):
  spec = T.TokenizerSpec(type=kind)
  vocab = _vocab_for(spec)
  py = T.Tokenizer(spec, vocab=vocab)
  graph = G.GraphTokenizer(spec, vocab)
  for prompt, rest in [("ROMEO: what", " say you?\nNo more"), ("First", " Citizen:"),
                       ("line\n", "  indented"), ("", " lead")]:
    ids = py.encode(prompt + rest).tolist()
    cut = len(py.encode(prompt))
    if ids[:cut] != py.encode(prompt).tolist():
      continue  # the prompt's last piece merges across the cut
    line_start = tf.constant([cut == 0 or ids[cut - 1] == T.EOS_ID])
    text = graph.decode(tf.ragged.constant([ids[cut:]], dtype=tf.int32), line_start)
    assert prompt + text.numpy()[0].decode("utf-8") == prompt + rest


@pytest.mark.parametrize("spec", [SPECS[0], SPECS[1], SPECS[2], SPECS[20], SPECS[50]],
                         ids=lambda s: s.type)
def test_bytes_that_are_not_utf8_are_replaced_as_python_does(spec):
  vocab = _vocab_for(spec)
  py = T.Tokenizer(spec, vocab=vocab)
  graph = G.GraphTokenizer(spec, vocab)
  rng = random.Random(1)
  raw = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))) for _ in range(200)]
  raw += [t.encode("utf-8")[:k] for t in RANDOM_TEXTS[:20] for k in (3, 7, 11)]
  for data, ids in zip(raw, graph.encode(tf.constant(raw))):
    assert ids.numpy().tolist() == py.encode_bytes(data).tolist(), data


def _normalize_in_graph(texts, form):
  cps = tf.strings.unicode_decode(tf.constant([t.encode("utf-8") for t in texts]), "UTF-8")
  flat, rows = G._unicode_normalize(  # pylint: disable=protected-access
      cps.flat_values, tf.cast(cps.value_rowids(), tf.int32), form)
  out = tf.strings.unicode_encode(tf.RaggedTensor.from_value_rowids(
      flat, tf.cast(rows, tf.int64), nrows=cps.nrows()), "UTF-8")
  return [t.decode("utf-8") for t in out.numpy()]


@pytest.mark.parametrize("form", ["NFC", "NFKC"])
def test_normalization_equals_unicodedata_on_every_code_point_and_mark_soup(form):
  singles = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
  for start in range(0, len(singles), 300_000):
    batch = singles[start:start + 300_000]
    got = _normalize_in_graph(batch, form)
    bad = [s for s, g in zip(batch, got) if g != unicodedata.normalize(form, s)]
    assert not bad, [hex(ord(s)) for s in bad[:10]]
  # Strings made of what composition is about: combining marks, characters
  # that decompose, the first and second halves of composition pairs
  # (starters too), Hangul jamo.
  keys, _, firsts, starter_seconds = G._composition_pairs()  # pylint: disable=protected-access
  pools = [[c for c in range(0x300, 0x370)] + [0x0345, 0x0327, 0x0323, 0x05B0, 0x093C],
           [ord(c) for c in "ÅåéÉṩǺ\u1e9b\u0958\u2126"], firsts.tolist(),
           sorted({int(k % (1 << 21)) for k in keys}), starter_seconds.tolist(),
           list(range(0x1100, 0x1113)) + list(range(0x1161, 0x1176)) +
           list(range(0x11A7, 0x11C3)), [ord(c) for c in "ae \n"], _ASSIGNED]
  rng = random.Random(form)
  texts = ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(0, 12)))
           for _ in range(50_000)]
  got = _normalize_in_graph(texts, form)
  bad = [t for t, g in zip(texts, got) if g != unicodedata.normalize(form, t)]
  assert not bad, [[hex(ord(c)) for c in t] for t in bad[:5]]


def test_lowercase_equals_python_on_every_code_point_and_sigma_contexts():
  spec = T.TokenizerSpec(type="char", normalization="none", lowercase=True)
  graph = G.GraphTokenizer(spec, list(T.RESERVED_TOKENS) + ["a"])
  singles = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
  got = graph.normalize(tf.constant([s.encode("utf-8") for s in singles])).numpy()
  bad = [s for s, g in zip(singles, got) if g.decode("utf-8") != s.lower()]
  assert not bad, [hex(ord(s)) for s in bad[:10]]
  ignorable = "'\u00ad\u0345:.\u0301"
  contexts = [a + b + "Σ" + c + d for a in ("", "A", "1", " ") for b in ("", *ignorable)
              for c in ("", *ignorable) for d in ("", "A", "b", " ", "1")]
  got = graph.normalize(tf.constant([s.encode("utf-8") for s in contexts])).numpy()
  assert [g.decode("utf-8") for g in got] == [s.lower() for s in contexts]


def test_ragged_helpers_equal_tensorflows_ragged_ops():
  rng = np.random.default_rng(3)
  shapes = [[], [0], [0, 0], [3], [2, 0, 5, 0, 1], list(rng.integers(0, 6, 40))]

  @tf.function(autograph=False)
  def helpers(ragged, flags, dense, lengths):
    strings = ragged.with_flat_values(tf.strings.as_string(ragged.flat_values))
    return (G.row_ids(ragged), G.row_sums(ragged, flags),
            G.keep_values(ragged, flags).to_tensor(-1), G.join_rows(strings),
            G._firsts(ragged), G.from_dense(dense, lengths).to_tensor(-1))  # pylint: disable=protected-access

  for lengths in shapes:
    rows = [rng.integers(0, 9, n).astype(np.int32) for n in lengths]
    ragged = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(rows + [np.zeros(0, np.int32)])),
        tf.constant(lengths, tf.int64))
    flags = ragged.flat_values > 4
    dense = ragged.to_tensor(7)
    cut = tf.constant([rng.integers(0, n + 1) for n in lengths], tf.int32)
    got = [x.numpy() for x in helpers(ragged, flags, dense, cut)]
    want = [ragged.value_rowids(),
            tf.reduce_sum(tf.cast(ragged > 4, tf.int32), axis=1),
            tf.ragged.boolean_mask(ragged, ragged > 4).to_tensor(-1),
            tf.strings.reduce_join(tf.strings.as_string(ragged), axis=1),
            tf.equal(tf.ragged.range(ragged.row_lengths()), 0).flat_values,
            tf.RaggedTensor.from_tensor(dense, lengths=cut).to_tensor(-1)]
    for name, g, w in zip(["row_ids", "row_sums", "keep_values", "join_rows", "firsts",
                           "from_dense"], got, want):
      np.testing.assert_array_equal(g, w.numpy(), err_msg=f"{name} of rows {lengths}")
