import io

import pytest

from beam_preprocess import inputs


def _read_all(data: bytes, chunks):
  """Reads chunks with align_boundary, as the pipeline does."""
  f = io.BytesIO(data)
  out = []
  for start, end in chunks:
    a = inputs.align_boundary(f, start, len(data))
    b = inputs.align_boundary(f, end, len(data))
    out.append(data[a:b])
  return out


def test_align_boundary_by_example():
  f = io.BytesIO(b"ab\ncd\nef")
  assert inputs.align_boundary(f, 4, 8) == 6
  assert inputs.align_boundary(f, 3, 8) == 3
  assert inputs.align_boundary(f, 0, 8) == 0
  assert inputs.align_boundary(f, 8, 8) == 8


@pytest.mark.parametrize("chunk", [5, 7, 64, 1000])
def test_chunks_cover_every_byte_once_on_line_boundaries(chunk):
  data = b"".join(b"line %d %s\n" % (i, b"x" * (i % 13)) for i in range(200))
  edges = list(range(0, len(data), chunk)) + [len(data)]
  pieces = _read_all(data, zip(edges[:-1], edges[1:]))
  assert b"".join(pieces) == data
  assert all(p.endswith(b"\n") for p in pieces if p)


def test_a_line_longer_than_the_search_is_cut_at_a_character(monkeypatch):
  monkeypatch.setattr(inputs, "LINE_SEARCH_BYTES", 16)
  data = "é" * 100  # 200 bytes, no newline, 2-byte characters
  raw = data.encode()
  pieces = _read_all(raw, [(0, 51), (51, 101), (101, 200)])
  assert b"".join(pieces) == raw
  assert all(p.decode("utf-8") for p in pieces)  # no character split


def test_plan_chunks_tail_and_hash():
  f = inputs.InputFile(path="/x/a.txt", size=1000, document_id="a.txt")
  tail = inputs.plan_chunks([f], split_mode="tail", validation_fraction=0.1,
                            chunk_bytes=300)
  assert [(c.split, c.start, c.end) for c in tail] == [
      ("train", 0, 300), ("train", 300, 600), ("train", 600, 900),
      ("validation", 900, 1000)]
  assert [c.first_in_split for c in tail] == [True, False, False, True]
  hashed = inputs.plan_chunks([f], split_mode="hash", validation_fraction=0.5,
                              chunk_bytes=2000)
  expected = "validation" if inputs.hash_fraction("a.txt") < 0.5 else "train"
  assert [c.split for c in hashed] == [expected]


def test_hash_split_is_stable_when_files_are_added():
  ids = [f"doc{i}.txt" for i in range(200)]
  before = {i: inputs.hash_fraction(i) < 0.2 for i in ids}
  after = {i: inputs.hash_fraction(i) < 0.2 for i in ids + ["new1", "new2"]}
  assert all(before[i] == after[i] for i in ids)
  assert 20 < sum(before.values()) < 60


def test_match_inputs_errors_and_document_ids(tmp_path):
  with pytest.raises(FileNotFoundError, match="--input=.*nothing"):
    inputs.match_inputs([str(tmp_path / "nothing*.txt")])
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt").write_text("b\n")
  (tmp_path / "a.txt").write_text("a\n")
  (tmp_path / "empty.txt").write_text("")
  files, skipped = inputs.match_inputs([str(tmp_path)])
  assert sorted(f.document_id for f in files) == ["a.txt", "sub/b.txt"]
  assert skipped == [{"path": str(tmp_path / "empty.txt"), "reason": "empty", "bytes": 0}]
  files, _ = inputs.match_inputs([str(tmp_path / "*.txt")])
  assert [f.document_id for f in files] == ["a.txt"]
  with pytest.raises(ValueError, match="every matched file is empty"):
    inputs.match_inputs([str(tmp_path / "empty.txt")])
