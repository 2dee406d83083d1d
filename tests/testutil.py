"""Constants and helpers shared by the tests (conftest.py holds fixtures)."""

import os
import stat
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, "data", "tinyshakespeare.txt")
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
TESTDATA = os.path.join(REPO, "tests", "testdata")
BEAM_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def unwritable_dir(tmp_path):
  """A path nothing can be written below: a read-only directory, or (for
  root, whom permissions do not stop) a plain file."""
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
  if os.access(locked, os.W_OK):  # root ignores permissions
    locked = tmp_path / "file-not-dir"
    locked.write_text("x")
  return locked


def run_python(code, *args, cwd=None, env=None, timeout=300) -> str:
  """Runs `code` in a fresh Python (python -c code *args) and returns its
  standard output; a non-zero exit fails the test with the end of its
  standard error. env: the whole environment (default: this one)."""
  out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
  assert out.returncode == 0, f"exit status {out.returncode}:\n{out.stderr[-3000:]}"
  return out.stdout


def last_line(text: str) -> str:
  lines = text.strip().splitlines()
  assert lines, "no output"
  return lines[-1]


def shakespeare_text(num_bytes: int) -> str:
  with open(SHAKESPEARE, "rb") as f:
    data = f.read(num_bytes)
  return data[:data.rfind(b"\n") + 1].decode("utf-8")


# Pascal, Pensées (public domain): French whose accents an encoding detector
# can tell apart (a few accents in repeated English text are not enough).
FRENCH = ("Le cœur a ses raisons que la raison ne connaît point ; on le sait en "
          "mille choses. Je dis que le cœur aime l'être universel naturellement, "
          "et soi-même naturellement, selon qu'il s'y adonne ; et il se durcit "
          "contre l'un ou l'autre, à son choix. Vous avez rejeté l'un et conservé "
          "l'autre : est-ce par raison que vous vous aimez ? Été, hiver, père, "
          "mère, très, déjà, où, garçon, français.\n") * 20
