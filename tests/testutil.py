"""Constants and helpers shared by the tests (conftest.py holds fixtures)."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "data", "tinyshakespeare.txt")
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
TESTDATA = os.path.join(REPO, "tests", "testdata")
BEAM_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def shakespeare_text(num_bytes: int) -> str:
  with open(SHAKESPEARE, "rb") as f:
    data = f.read(num_bytes)
  return data[:data.rfind(b"\n") + 1].decode("utf-8")
