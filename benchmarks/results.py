"""Where a benchmark's table goes: appended to docs/results/NAME.md (the default; run from the
repository root) under a heading with the date, the command that made it and the machine, so
that every table under docs/ carries its command. `--markdown=FILE` sends it elsewhere and
`--markdown=` only prints it.
"""
import datetime
import os
import platform
import shlex
import sys

import jax

HELP = ("Append the table, under a heading with the date, command and machine, to this file "
        "('' to only print it).")


def default_path(name: str) -> str:
  """docs/results/NAME.md, the page that docs/results.md links for benchmark NAME."""
  return os.path.join("docs", "results", f"{name}.md")


def heading(name: str) -> str:
  """A markdown heading: UTC date and time, the runner's command line with this run's flags,
  and the machine (cores, JAX backend and device kind, device count, jax version)."""
  command = " ".join(["python -m bpdjax.bench", name] + [shlex.quote(a) for a in sys.argv[1:]])
  device = jax.devices()[0]
  when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  machine = (f"{os.cpu_count()} CPU cores ({platform.machine()}), {jax.device_count()} x "
             f"{device.platform} ({device.device_kind}), jax {jax.__version__}")
  return f"## {when}\n\n```bash\n{command}\n```\n\nMachine: {machine}.\n\n"


def append(path: str, name: str, markdown: str) -> None:
  """Appends `markdown` under heading(name) to `path` (nothing when path is '')."""
  if not path:
    return
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "a", encoding="utf-8") as f:
    f.write(heading(name) + markdown.strip() + "\n\n")
  print(f"Table appended to {path}")
