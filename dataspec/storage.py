"""Local paths and gs:// URIs behind one small set of functions.

Every job reads and writes its small files (metadata, vocab, markers, configs,
prompts, samples, checkpoint uploads) through these functions, so a path flag
behaves the same whether it names a local directory or `gs://bucket/prefix`.

GCS goes through google-cloud-storage: Application Default Credentials (or
Workload Identity) in production, and `STORAGE_EMULATOR_HOST` for a local
emulator in tests. Transient errors (429, 5xx, dropped connections) are
retried with the library's exponential backoff, also for writes, which are
all idempotent here (same object, same bytes). Permanent errors are raised as
`StorageError` naming the URI.
"""

import fnmatch
import functools
import os
import posixpath
import shutil
import tempfile
from typing import List, Optional, Tuple

GCS_SCHEME = "gs://"


class StorageError(IOError):
  """A permanent storage failure (missing bucket, permission denied...)."""


def is_gcs(path: str) -> bool:
  return str(path).startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
  if is_gcs(base):
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def dirname(path: str) -> str:
  if is_gcs(path):
    bucket, name = split_gcs(path)
    return f"{GCS_SCHEME}{bucket}/{posixpath.dirname(name)}".rstrip("/")
  return os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(path.rstrip("/")) if is_gcs(path) else os.path.basename(path)


def split_gcs(uri: str) -> Tuple[str, str]:
  """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
  rest = uri[len(GCS_SCHEME):]
  bucket, _, name = rest.partition("/")
  if not bucket:
    raise ValueError(f"Not a gs:// URI with a bucket: {uri!r}")
  return bucket, name


# ---- GCS plumbing ----------------------------------------------------------


def _client():
  return _client_for(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.lru_cache(maxsize=None)
def _client_for(emulator_host: Optional[str]):
  """One client per endpoint (tests switch between emulator and proxy)."""
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  if emulator_host:
    from google.auth.credentials import AnonymousCredentials  # pylint: disable=g-import-not-at-top
    return storage.Client(credentials=AnonymousCredentials(),
                          project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"))
  return storage.Client()


def _retry():
  from google.cloud.storage.retry import DEFAULT_RETRY  # pylint: disable=g-import-not-at-top
  return DEFAULT_RETRY


def _blob(uri: str):
  bucket, name = split_gcs(uri)
  return _client().bucket(bucket).blob(name)


def _raise_permanent(uri: str, err: Exception):
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  if isinstance(err, exceptions.NotFound):
    bucket, _ = split_gcs(uri)
    if not _client().bucket(bucket).exists(retry=_retry()):
      raise StorageError(f"Bucket gs://{bucket} does not exist (while "
                         f"accessing {uri})") from err
    raise FileNotFoundError(f"No such object: {uri}") from err
  if isinstance(err, exceptions.Forbidden):
    raise StorageError(f"Permission denied for {uri}: check the service "
                       "account's roles on the bucket") from err
  raise StorageError(f"Storage error for {uri}: {err}") from err


def _gcs_call(uri: str, fn, *args, **kwargs):
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    return fn(*args, **kwargs)
  except (exceptions.NotFound, exceptions.Forbidden) as err:
    _raise_permanent(uri, err)
  except exceptions.GoogleAPICallError as err:
    _raise_permanent(uri, err)


def check_bucket(uri: str):
  """Raises StorageError naming `uri` if its bucket does not exist."""
  if not is_gcs(uri):
    return
  bucket, _ = split_gcs(uri)
  if not _gcs_call(uri, _client().bucket(bucket).exists, retry=_retry()):
    raise StorageError(f"Bucket gs://{bucket} does not exist (from {uri})")


# ---- the API ---------------------------------------------------------------


def exists(path: str) -> bool:
  if is_gcs(path):
    return bool(_gcs_call(path, _blob(path).exists, retry=_retry()))
  return os.path.exists(path)


def read_bytes(path: str) -> bytes:
  if is_gcs(path):
    return _gcs_call(path, _blob(path).download_as_bytes, retry=_retry())
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes):
  """Writes `data` so that readers see either nothing or all of it."""
  if is_gcs(path):
    # One upload call: the object appears only when the upload completes.
    _gcs_call(path, _blob(path).upload_from_string, data,
              content_type="application/octet-stream", retry=_retry())
    return
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str):
  write_bytes(path, text.encode("utf-8"))


def upload_file(local_path: str, path: str):
  """Copies a local file to `path` (local or gs://), atomically."""
  if is_gcs(path):
    _gcs_call(path, _blob(path).upload_from_filename, local_path,
              retry=_retry())
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp-upload"
  shutil.copyfile(local_path, tmp)
  os.replace(tmp, path)


def size(path: str) -> int:
  """Bytes in a file or object (FileNotFoundError if missing)."""
  if is_gcs(path):
    blob = _gcs_call(path, _client().bucket(split_gcs(path)[0]).get_blob,
                     split_gcs(path)[1], retry=_retry())
    if blob is None:
      raise FileNotFoundError(f"No such object: {path}")
    return int(blob.size)
  return os.path.getsize(path)


def open_read(path: str, *, start: int = 0):
  """A binary file object reading `path` from byte `start` (gs:// objects are
  streamed in chunks, with the client's retries)."""
  if is_gcs(path):
    handle = _gcs_call(path, _blob(path).open, "rb", chunk_size=4 << 20,
                       retry=_retry())
  else:
    handle = open(path, "rb")
  if start:
    handle.seek(start)
  return handle


def match(pattern: str) -> List[str]:
  """The files a path names: itself if it is a file, every file below it if
  it is a directory (or gs:// prefix), or those matching a pattern whose
  wildcards are in the last component. [] if nothing matches."""
  if any(c in pattern for c in "*?["):
    return glob(pattern)
  if is_gcs(pattern):
    _, name = split_gcs(pattern)
    if name and exists(pattern):
      return [pattern]
    return list_dir(pattern)
  if os.path.isfile(pattern):
    return [pattern]
  return list_dir(pattern) if os.path.isdir(pattern) else []


def download_file(path: str, local_path: str):
  os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
  if is_gcs(path):
    tmp = local_path + ".tmp-download"
    _gcs_call(path, _blob(path).download_to_filename, tmp, retry=_retry())
    os.replace(tmp, local_path)
    return
  shutil.copyfile(path, local_path)


def delete(path: str):
  """Deletes one file or object; missing is fine."""
  if is_gcs(path):
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
    try:
      _blob(path).delete(retry=_retry())
    except exceptions.NotFound:
      pass
    return
  if os.path.exists(path):
    os.remove(path)


def list_dir(path: str) -> List[str]:
  """Full paths of the files under directory `path` (recursively)."""
  if is_gcs(path):
    bucket, prefix = split_gcs(path)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    blobs = _gcs_call(path, _client().list_blobs, bucket, prefix=prefix,
                      retry=_retry())
    return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs)
  out = []
  for root, _, files in os.walk(path):
    out.extend(os.path.join(root, f) for f in files)
  return sorted(out)


def glob(pattern: str) -> List[str]:
  """Files matching a pattern whose wildcards are in the last component."""
  directory, name_pattern = pattern.rsplit("/", 1)
  if is_gcs(pattern):
    candidates = [p for p in list_dir(directory)
                  if "/" not in p[len(directory) + 1:]]
  else:
    candidates = ([os.path.join(directory, f) for f in os.listdir(directory)]
                  if os.path.isdir(directory) else [])
  return sorted(p for p in candidates
                if fnmatch.fnmatchcase(basename(p), name_pattern))


def delete_dir(path: str):
  """Deletes everything under `path`."""
  if is_gcs(path):
    for p in list_dir(path):
      delete(p)
  elif os.path.isdir(path):
    shutil.rmtree(path)


def check_writable(path: str):
  """Fails early, naming `path`, if a directory cannot be written."""
  if is_gcs(path):
    check_bucket(path)
    return
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as err:
    raise PermissionError(f"Cannot write to {path}: {err}") from err


