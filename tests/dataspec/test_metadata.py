import json
import os

import pytest

import dataspec
from dataspec import metadata as M
from testutil import TESTDATA


def test_tiny_dataset_metadata_matches_golden(tiny_dataset):
  meta = M.load_dataset_metadata(str(tiny_dataset))
  got = json.loads(meta.to_json())
  want = json.load(open(os.path.join(TESTDATA, "metadata.json")))
  # Paths and file lists depend on the machine and runner; the rest must not.
  for d in (got, want):
    d.pop("inputs")
    for split in d["splits"].values():
      split.pop("files")
      split.pop("shards")
  assert got == want


def test_reader_refuses_missing_or_stale_marker(tiny_dataset, tmp_path):
  import shutil
  copy = tmp_path / "copy"
  shutil.copytree(tiny_dataset, copy)
  os.remove(copy / "COMPLETED")
  with pytest.raises(M.IncompleteDatasetError, match="COMPLETED is missing"):
    M.load_dataset_metadata(str(copy), flag="dataset_dir")
  shutil.copy(tiny_dataset / "COMPLETED", copy / "COMPLETED")
  (copy / "metadata.json").write_text((copy / "metadata.json").read_text() + " ")
  with pytest.raises(M.IncompleteDatasetError, match="does not match"):
    M.load_dataset_metadata(str(copy))


def test_reader_refuses_other_schema_version(tiny_dataset, tmp_path):
  meta = M.load_dataset_metadata(str(tiny_dataset))
  meta.schema_version = dataspec.SCHEMA_VERSION + 1
  M.write_dataset_metadata(str(tmp_path), meta)
  with pytest.raises(ValueError, match="schema_version"):
    M.load_dataset_metadata(str(tmp_path))
