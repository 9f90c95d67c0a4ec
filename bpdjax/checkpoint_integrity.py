"""Checkpoint integrity: a sha256 manifest of every file orbax wrote for a step, recorded at save
time beside orbax's own metadata (CHECKPOINT_DIR/<step>/MANIFEST_FILE, see workdir.py), and
verified before a restore.

The manifest covers the bytes on disk, not the arrays, so it needs no gather of a sharded state
and catches what orbax's own metadata does not: flipped bytes, truncated or missing files
(e.g. state/_METADATA). A checkpoint without a manifest (written before this existed, or a save
cut short before its manifest) passes `verify`; checkpoints.py then re-reads it whole and
checks it before trusting it (`has_manifest`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from bpdjax import fileio
from bpdjax import workdir as workdir_lib

_CHUNK = 1 << 22  # Bytes hashed at a time (files are streamed, never read whole).


def step_dir(checkpoint_dir: str, step: int) -> str:
  """The folder of one step (orbax's default step naming: the bare number)."""
  return fileio.join(checkpoint_dir, str(int(step)))


def _files(directory: str) -> dict[str, str]:
  """{relative path: path} of every file under `directory` except the manifest."""
  root = fileio.as_path(directory)
  out, todo = {}, [root]
  while todo:  # Folder by folder (epath has no recursive glob on object stores).
    for p in todo.pop().iterdir():
      if p.is_dir():
        todo.append(p)
      elif p.name != workdir_lib.CHECKPOINT_MANIFEST:
        out[os.fspath(p.relative_to(root))] = os.fspath(p)
  return out


def _sha256(path: str) -> tuple[str, int]:
  digest, size = hashlib.sha256(), 0
  with fileio.as_path(path).open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
      size += len(chunk)
  return digest.hexdigest(), size


def write_manifest(directory: str) -> dict:
  """Records {relative path: {"sha256", "bytes"}} of a finished step folder; returns it."""
  files = {}
  for rel, path in sorted(_files(directory).items()):
    digest, size = _sha256(path)
    files[rel] = {"sha256": digest, "bytes": size}
  manifest = {"version": 1, "files": files}
  fileio.write_atomic(fileio.join(directory, workdir_lib.CHECKPOINT_MANIFEST),
                      json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


def has_manifest(directory: str) -> bool:
  return fileio.exists(fileio.join(directory, workdir_lib.CHECKPOINT_MANIFEST))


def verify(directory: str) -> Optional[str]:
  """None when every file of the step folder's manifest is there with its size and sha256, or
  when there is no manifest (unverified: see module docstring); else what is wrong, naming the
  first bad files (missing, truncated, changed)."""
  if not fileio.isdir(directory):
    return f"{directory} does not exist (removed, e.g. pruned by a running training?)"
  manifest_path = fileio.join(directory, workdir_lib.CHECKPOINT_MANIFEST)
  if not fileio.exists(manifest_path):
    return None
  try:
    files = json.loads(fileio.read_text(manifest_path))["files"]
  except (ValueError, KeyError, TypeError) as e:
    return f"its manifest {workdir_lib.CHECKPOINT_MANIFEST} is unreadable ({e})"
  present = _files(directory)
  problems = []
  for rel, want in sorted(files.items()):
    if rel not in present:
      problems.append(f"{rel} is missing")
      continue
    digest, size = _sha256(present[rel])
    if size != want["bytes"]:
      problems.append(f"{rel} has {size} bytes, {want['bytes']} were written (truncated?)")
    elif digest != want["sha256"]:
      problems.append(f"{rel} has changed (sha256 {digest[:12]}..., saved {want['sha256'][:12]}...)")
  if not problems:
    return None
  more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
  return "; ".join(problems[:3]) + more
