"""bpe and unigram tokenizers: SentencePiece trained from word counts, exact
round trips, reserved ids, byte fallback, and the model file's checks."""

import random

import numpy as np
import pytest
import sentencepiece as spm

from dataspec import paths
from dataspec import subword
from dataspec import tokenizer as T
from dataspec import vocab as V
from testutil import SHAKESPEARE, shakespeare_text

CORPUS = open(SHAKESPEARE, encoding="utf-8").read()


def _model(kind, text=CORPUS, vocab_size=1000, **kw):
  spec = T.TokenizerSpec(type=kind, **kw)
  return spec, subword.train_model(T.make_counter(spec)(text), model_type=kind,
                                   vocab_size=vocab_size)


def _random_unicode(rng, n):
  pools = ["abc XYZ  \t\n", "".join(map(chr, range(0x20, 0x7F))), "éüßçΣσςİ日本語한국어😀\u0301\x00"]
  out = []
  for _ in range(n):
    if rng.random() < 0.8:
      out.append(rng.choice(rng.choice(pools)))
    else:  # any code point but surrogates and SentencePiece's space symbol
      cp = rng.randrange(0x110000)
      out.append(chr(cp) if not 0xD800 <= cp < 0xE000 and cp != 0x2581 else "?")
  return "".join(out)


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_round_trip_on_the_bundled_corpus_and_random_unicode(kind):
  spec, model = _model(kind)
  tok = T.Tokenizer(spec, vocab=model)
  assert tok.vocab_size == 1000
  ids = tok.encode(CORPUS)
  assert tok.decode(ids) == CORPUS  # ASCII: NFC changes nothing
  # Subwords: 3.5x fewer ids than characters at 1,000 pieces.
  assert len(ids) < len(CORPUS) / 2
  rng = random.Random(3)
  for _ in range(200):
    text = _random_unicode(rng, rng.randint(0, 300))
    ids = tok.encode(text)
    assert tok.decode(ids) == T.normalize_text(text, spec), text
    assert T.UNK_ID not in ids and T.PAD_ID not in ids  # byte fallback
  # Line ends are <eos>, nothing else is.
  ids = tok.encode("a\n\nb\n")
  assert ids.tolist().count(T.EOS_ID) == 3
  assert tok.decode(ids) == "a\n\nb\n"


def test_reserved_ids_bytes_and_normalization():
  spec, model = _model("bpe", lowercase=True, normalization="nfkc")
  tok = T.Tokenizer(spec, vocab=model)
  assert tok.vocab[:3] == ["<pad>", "<unk>", "<eos>"]
  assert tok.vocab[3] == "<0x00>" and tok.vocab[258] == "<0xFF>"
  # Our normalization runs first: NFKC "ﬁ" -> "fi", lowercase.
  assert tok.decode(tok.encode("ﬁRST Citizen")) == "first citizen"
  # Literal reserved names in text are text, not reserved ids.
  ids = tok.encode("<pad> <unk> <eos>")
  assert not set(ids.tolist()) & {0, 1, 2}
  assert tok.decode(ids) == "<pad> <unk> <eos>"
  # A character never seen in training is its UTF-8 bytes.
  ids = tok.encode("日")
  assert [tok.vocab[i] for i in ids[-3:]] == ["<0xE6>", "<0x97>", "<0xA5>"]
  # The model is a plain SentencePiece model anyone can load.
  sp = spm.SentencePieceProcessor(model_proto=model)
  assert sp.pad_id() == 0 and sp.unk_id() == 1 and sp.eos_id() == 2 and sp.bos_id() == -1
  line = "Before we proceed any further, hear me speak."
  assert sp.encode(line.lower()) == tok.encode(line).tolist()


def test_counts_are_what_sentencepiece_calls_words():
  counts = subword.pretoken_counts("the cat\n  the\tdog \n")
  assert counts == {"the": 1, "cat": 1, "the\tdog": 1}


def test_training_from_summed_counts_equals_training_from_whole_counts():
  spec = T.TokenizerSpec(type="unigram")
  count = T.make_counter(spec)
  text = shakespeare_text(200_000)
  parts = [count(p + "\n\n") for p in text.split("\n\n")[::-1]]
  summed = {}
  for p in parts:
    for w, c in p.items():
      summed[w] = summed.get(w, 0) + c
  a = subword.train_model(summed, model_type="unigram", vocab_size=600)
  b = subword.train_model(dict(count(text)), model_type="unigram", vocab_size=600)
  # The same bytes: no temporary path or machine's thread count inside.
  assert subword.fingerprint(a) == subword.fingerprint(b)


def test_sample_counts_scales_a_large_table_down_like_a_sample():
  words = [("the", 6000), ("cat", 2000), ("sat", 301), ("a", 200), ("zyzzyva", 2)]
  text = 6000 * 4 + 2000 * 4 + 301 * 4 + 200 * 2 + 2 * 8  # word + separator
  assert subword.sample_counts(words, text) == words  # fits: as it is
  assert subword.sample_counts(words, 0) == words  # 0 = no limit
  # A tenth: counts / 10 rounded to nearest (30.1 -> 30); 0.2 -> 0 is left out.
  assert subword.sample_counts(words, text // 10) == [
      ("the", 600), ("cat", 200), ("sat", 30), ("a", 20)]
  got = subword.sample_counts(words, 1000)
  assert [w for w, _ in got] == ["the", "cat", "sat", "a"]
  size = sum(c * (len(w) + 1) for w, c in got)
  assert 990 <= size <= 1010
  # Multi-byte words count their UTF-8 bytes.
  assert subword.sample_counts([("日本", 100), ("ab", 100)], 500) == [("日本", 50), ("ab", 50)]


def test_unigram_trains_on_the_sampled_counts_and_bpe_on_all():
  """train_model scales unigram tables larger than unigram_sample_mb down
  (SentencePiece's unigram trainer copies every word count times; its
  memory grows with the corpus), and leaves bpe's alone."""
  counts = T.make_counter(T.TokenizerSpec(type="unigram"))(shakespeare_text(200_000))
  words = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
  sampled = dict(subword.sample_counts(words, 50_000))
  assert 0 < len(sampled) < len(counts)
  small = subword.train_model(counts, model_type="unigram", vocab_size=600,
                              unigram_sample_mb=0.05)
  assert small == subword.train_model(sampled, model_type="unigram", vocab_size=600,
                                      unigram_sample_mb=0)
  assert small != subword.train_model(counts, model_type="unigram", vocab_size=600)
  bpe = subword.train_model(counts, model_type="bpe", vocab_size=600)
  assert bpe == subword.train_model(counts, model_type="bpe", vocab_size=600,
                                    unigram_sample_mb=0.05)
  with pytest.raises(ValueError, match="--unigram_sample_mb=1e-06 is too small"):
    subword.train_model(counts, model_type="unigram", vocab_size=600,
                        unigram_sample_mb=1e-6)
  with pytest.raises(ValueError, match="--unigram_sample_mb must be >= 0"):
    subword.train_model(counts, model_type="unigram", vocab_size=600,
                        unigram_sample_mb=-1)


def test_bad_sizes_and_models_are_refused():
  with pytest.raises(ValueError, match="at least 260"):
    subword.train_model({"a": 1}, model_type="bpe", vocab_size=100)
  with pytest.raises(ValueError, match="character_coverage"):
    subword.train_model({"a": 1}, model_type="bpe", vocab_size=300,
                        character_coverage=0.5)
  with pytest.raises(ValueError, match="min_count=5"):
    subword.train_model({"a": 1}, model_type="bpe", vocab_size=300, min_count=5)
  with pytest.raises(ValueError, match="Not a SentencePiece model"):
    subword.SubwordModel(b"not a model")
  with pytest.raises(ValueError, match="needs its SentencePiece model"):
    T.Tokenizer(T.TokenizerSpec(type="bpe"), vocab=list(T.RESERVED_TOKENS))


def test_model_file_is_checked_against_its_fingerprint(tmp_path):
  spec, model = _model("bpe", text=shakespeare_text(50_000), vocab_size=400)
  _, other = _model("unigram", text=shakespeare_text(50_000), vocab_size=400)
  root = paths.DatasetPaths(str(tmp_path))
  V.write_for(root, spec, model)
  assert (tmp_path / "tokenizer.model").read_bytes() == model
  assert V.read_for(root, spec, V.fingerprint_for(spec, model)) == model
  V.write_for(root, spec, other)
  with pytest.raises(ValueError, match="tokenizer.model does not match the vocab_fingerprint"):
    V.read_for(root, spec, V.fingerprint_for(spec, model))


def test_many_lines_give_one_flat_array_with_eos_between_lines():
  spec, model = _model("bpe", text=shakespeare_text(50_000), vocab_size=400)
  tok = T.Tokenizer(spec, vocab=model)
  lines = ["to be", "", "or not"] * 100
  ids = tok.encode("\n".join(lines))
  assert ids.dtype == np.int32
  assert ids.tolist().count(T.EOS_ID) == len(lines) - 1
