"""One path layer for every file bpdjax reads or writes: etils `epath`, the layer orbax uses.

A path is a local path or a URL such as `gs://bucket/run`; the same calls work on both, so a
workdir in a bucket is not a special case. `write_atomic` is all-or-nothing where the storage
allows it: locally it writes a temporary file and renames it (readers never see half a file);
on an object store a single upload is already all-or-nothing (the object appears whole once the
upload finishes), so it writes the object directly.
"""
from __future__ import annotations

import os
import re
from typing import Union

from etils import epath

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


def makedirs(path: PathLike) -> None:
  as_path(path).mkdir(parents=True, exist_ok=True)


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


def remove(path: PathLike) -> None:
  """Removes a file or a directory tree; a missing path is fine."""
  p = as_path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()
