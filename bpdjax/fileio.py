"""One path layer for every file bpdjax reads or writes: etils `epath`, the layer orbax uses.

A path is a local path or a URL such as `gs://bucket/run`; the same calls work on both, so a
workdir in a bucket is not a special case. `write_atomic` is all-or-nothing where the storage
allows it: locally it writes a temporary file and renames it (readers never see half a file);
on an object store a single upload is already all-or-nothing (the object appears whole once the
upload finishes), so it writes the object directly.

Why epath and not tf.io.gfile: orbax writes the checkpoints through epath already, so one layer
serves every file of a workdir; `bpdjax.load` stays free of TensorFlow; and epath's fsspec
backend (gcsfs for gs://) honours STORAGE_EMULATOR_HOST, so a bucket workdir is tested against a
local Cloud Storage emulator (tests/test_gcs_emulator.py). epath picks tf.io.gfile for URLs
whenever TensorFlow is installed unless EPATH_USE_TF is false, so this module sets that default
before any path is opened (an explicit EPATH_USE_TF in the environment wins).

Bucket I/O fails fast: every gcsfs request has a connect and a read timeout
(BPDJAX_REMOTE_TIMEOUT_S, default 20 s; gcsfs retries a failed request at most 6 times), and
`check_bucket`, which every entry point (train.py, decode.py, `bpdjax.load`) calls before it
touches a bucket, gives up after BPDJAX_REMOTE_DEADLINE_S (default 25 s) with a
`BucketUnreachable` that names the bucket, the endpoint in use and the environment variables
that choose it, instead of hanging in DNS or connection retries.

Object stores have no append: `append_text` rewrites the object with the new text at its end (a
log of a few thousand lines, such as metrics.jsonl, stays cheap). Tools that need a local file
(SentencePiece, KenLM, tokenizers) get one from `local_copy`.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from typing import Any, Callable, Union

# Before the first epath call (see the module docstring): gs:// through fsspec/gcsfs, not TF.
os.environ.setdefault("EPATH_USE_TF", "false")

import aiohttp  # pylint: disable=g-import-not-at-top,wrong-import-position
from etils import epath  # pylint: disable=g-import-not-at-top,wrong-import-position
import fsspec  # pylint: disable=g-import-not-at-top,wrong-import-position

REMOTE_TIMEOUT_ENV = "BPDJAX_REMOTE_TIMEOUT_S"
REMOTE_DEADLINE_ENV = "BPDJAX_REMOTE_DEADLINE_S"
# Where each scheme's endpoint and credentials come from (named in BucketUnreachable).
_ENDPOINT_ENV = {"gs": ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com",
                        ("GOOGLE_APPLICATION_CREDENTIALS", "TENSORSTORE_GCS_HTTP_URL")),
                 "s3": ("AWS_ENDPOINT_URL", "https://s3.amazonaws.com",
                        ("AWS_ACCESS_KEY_ID", "AWS_PROFILE"))}


def _seconds(env: str, default: float) -> float:
  value = os.environ.get(env, "")
  try:
    seconds = float(value) if value else default
  except ValueError:
    raise ValueError(f"{env}={value!r} is not a number of seconds") from None
  if seconds <= 0:
    raise ValueError(f"{env}={value!r} must be > 0 seconds")
  return seconds


class BucketUnreachable(ConnectionError):
  """A bucket that did not answer within the deadline (network, endpoint or credentials)."""

# A workdir is read while another process writes it (a notebook or decode.py beside a training
# run; orbax's latest step after a resume), so bucket listings are never cached (gcsfs would
# otherwise keep the first listing of checkpoints/ for the life of the process).
# Every request gets a connect and a read timeout (aiohttp's default is 5 minutes in total).
for _protocol in ("gs", "gcs"):
  _conf = fsspec.config.conf.setdefault(_protocol, {})
  _conf.setdefault("use_listings_cache", False)
  _timeout = _seconds(REMOTE_TIMEOUT_ENV, 20.0)
  _conf.setdefault("requests_timeout", aiohttp.ClientTimeout(
      total=None, connect=_timeout, sock_connect=_timeout, sock_read=_timeout))

PathLike = Union[str, os.PathLike]
# Schemes epath can reach (gpath.py); anything else with "://" is refused with a clear error.
_SCHEMES = ("gs", "s3", "az", "hf")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: PathLike) -> str:
  """"" for a local path, else the URL scheme ("gs", ...)."""
  match = _URL.match(os.fspath(path))
  return match.group(1).lower() if match else ""


def is_remote(path: PathLike) -> bool:
  return bool(scheme(path))


def as_path(path: PathLike) -> epath.Path:
  """epath.Path of a local path or a supported URL; ValueError names an unknown scheme."""
  s = scheme(path)
  if s and s not in _SCHEMES:
    raise ValueError(f"Unsupported path scheme {s!r} in {os.fspath(path)!r}: use a local path or "
                     f"one of {', '.join(x + '://' for x in _SCHEMES)}")
  return epath.Path(os.fspath(path))


def absolute(path: PathLike) -> str:
  """A local path made absolute; a URL unchanged (os.path.abspath would mangle it)."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def join(path: PathLike, *parts: str) -> str:
  return os.fspath(as_path(path).joinpath(*parts))


def exists(path: PathLike) -> bool:
  return as_path(path).exists()


def isdir(path: PathLike) -> bool:
  return as_path(path).is_dir()


def bucket(path: PathLike) -> str:
  """The bucket of a URL ("" for a local path): gs://bucket/run -> "bucket"."""
  if not is_remote(path):
    return ""
  return os.fspath(path).split("://", 1)[1].split("/", 1)[0]


def check_bucket(path: PathLike) -> None:
  """FileNotFoundError naming the bucket when the bucket of URL `path` does not exist (object
  stores have no folders to create, so a missing bucket would otherwise fail at the first
  upload with an HTTP error); nothing for a local path. ValueError for an unknown scheme."""
  as_path(path)
  name = bucket(path)
  if not name:
    if is_remote(path):
      raise ValueError(f"{os.fspath(path)!r} names no bucket")
    return
  root = as_path(f"{scheme(path)}://{name}")
  deadline = _seconds(REMOTE_DEADLINE_ENV, 25.0)
  try:
    found = _within(deadline, root.exists)
  except (OSError, ValueError) as e:  # Auth or network trouble: say which bucket and endpoint.
    raise BucketUnreachable(_unreachable(path, name, deadline, e)) from e
  if not found:
    raise FileNotFoundError(f"Bucket {name!r} of {os.fspath(path)!r} does not exist (or these "
                            f"credentials cannot see it): create it first, e.g. `gcloud storage "
                            f"buckets create {scheme(path)}://{name}`")


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
  """fn() or TimeoutError after `seconds` (fn keeps running in a daemon thread, which does not
  keep the process alive)."""
  out: dict = {}

  def target():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  # Re-raised in the caller.
      out["error"] = e
  thread = threading.Thread(target=target, daemon=True, name="bpdjax-bucket-check")
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise TimeoutError(f"no answer within {seconds:g} s")
  if "error" in out:
    raise out["error"]
  return out["value"]


def endpoint(url_scheme: str) -> str:
  """The endpoint a scheme's requests go to, and the variable that chose it."""
  env, default, _ = _ENDPOINT_ENV.get(url_scheme, ("", "", ()))
  if env and os.environ.get(env):
    return f"{os.environ[env]} (from {env})"
  return f"{default or 'the default endpoint'} (the default{f'; {env} overrides it' if env else ''})"


def _unreachable(path: PathLike, name: str, deadline: float, error: Exception) -> str:
  s = scheme(path)
  env, _, others = _ENDPOINT_ENV.get(s, ("", "", ()))
  variables = ", ".join(v for v in (env, *others) if v)
  text = " ".join(f"{type(error).__name__}: {error}".split())[:300]
  return (f"Cannot reach bucket {name!r} of {os.fspath(path)!r} at endpoint {endpoint(s)} "
          f"within {deadline:g} s ({text}). Check the network, the endpoint and the credentials"
          + (f" (environment: {variables})" if variables else "")
          + f"; {REMOTE_DEADLINE_ENV} and {REMOTE_TIMEOUT_ENV} set how long to wait.")


def makedirs(path: PathLike) -> None:
  """Makes a local folder and its parents; for a URL checks that its bucket exists."""
  if is_remote(path):
    check_bucket(path)
  as_path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: PathLike) -> list[str]:
  """Names in a folder (sorted); [] for a missing one."""
  p = as_path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def read_bytes(path: PathLike) -> bytes:
  return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  """UTF-8 text; bytes that are not UTF-8 raise ValueError naming the file and line."""
  data = read_bytes(path)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[:e.start].count(b"\n") + 1
    raise ValueError(f"{os.fspath(path)}: line {line} is not valid UTF-8 (byte "
                     f"{data[e.start]:#04x} at offset {e.start})") from None


def write_atomic(path: PathLike, data: Union[str, bytes]) -> None:
  """Writes `data` to `path` whole or not at all (see module docstring); makes parent dirs."""
  target = as_path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  payload = data.encode("utf-8") if isinstance(data, str) else data
  if is_remote(path):
    target.write_bytes(payload)
    return
  tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
  tmp.write_bytes(payload)
  os.replace(os.fspath(tmp), os.fspath(target))


def append_text(path: PathLike, text: str) -> None:
  """Appends `text` to a file (made if missing). Locally one buffered append; on an object store
  the object is rewritten whole with `text` at its end (there is no append)."""
  if not is_remote(path):
    with open(os.fspath(path), "a", encoding="utf-8") as f:
      f.write(text)
    return
  target = as_path(path)
  old = target.read_bytes() if target.exists() else b""
  target.write_bytes(old + text.encode("utf-8"))


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies one file between any two paths (write_atomic at the destination)."""
  write_atomic(dst, read_bytes(src))


def local_copy(path: PathLike) -> str:
  """A local path with the contents of `path`: `path` itself when local, else a copy of the
  file (or of a folder's files, one level) under the temporary directory, reused while its
  bytes are unchanged. For tools that only open local files (SentencePiece, KenLM, tokenizers).

  Raises:
    FileNotFoundError: `path` does not exist.
  """
  if not is_remote(path):
    return os.fspath(path)
  src = as_path(path)
  if not src.exists():
    raise FileNotFoundError(f"Not found: {os.fspath(path)}")
  key = hashlib.sha256(os.fspath(path).encode("utf-8")).hexdigest()[:16]
  root = os.path.join(tempfile.gettempdir(), "bpdjax-remote", key)
  dst = os.path.join(root, src.name)
  files = [(c, os.path.join(dst, c.name)) for c in src.iterdir() if not c.is_dir()] \
      if src.is_dir() else [(src, dst)]
  for remote_file, local in files:
    data = remote_file.read_bytes()
    if os.path.isfile(local) and epath.Path(local).read_bytes() == data:
      continue
    write_atomic(local, data)
  return dst


def remove(path: PathLike) -> None:
  """Removes a file or a directory tree; a missing path is fine."""
  p = as_path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()
