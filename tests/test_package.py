"""The installable package: `pip install .` (here into a --target folder, no dependencies: the
environment has them) gives bpdjax, its configs and the console scripts, usable from outside
the source tree."""
import os
import subprocess
import sys

import pytest

from bpdjax import configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(site folder with the installed package, its bin folder)."""
  target = tmp_path_factory.mktemp("site")
  proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                         "--no-build-isolation", "--disable-pip-version-check", "--target",
                         str(target), ROOT], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(target), str(target / "bin")


def _outside(installed, tmp_path):
  """Environment and cwd of a process that sees the installed package, not the checkout."""
  site, bin_dir = installed
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(PYTHONPATH=site, PATH=bin_dir + os.pathsep + env.get("PATH", ""),
             JAX_PLATFORMS="cpu")
  return dict(env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_import_and_generate_from_another_directory(installed, trained_tiny_workdir, tmp_path):
  code = ("import bpdjax, importlib.util\n"
          f"assert bpdjax.__file__.startswith({installed[0]!r}), bpdjax.__file__\n"
          "assert importlib.util.find_spec('configs') is None, 'a top-level configs package'\n"
          f"m = bpdjax.load({trained_tiny_workdir!r})\n"
          "out = bpdjax.generate(m, 'First Citizen:', method='bpd', max_new_tokens=16)\n"
          "ref = bpdjax.generate(m, 'First Citizen:', method='ar', max_new_tokens=16)\n"
          "assert out.tokens == ref.tokens\n"
          "print('FROM', bpdjax.__file__, 'BE', round(out.block_efficiency, 3), repr(out))\n")
  proc = subprocess.run([sys.executable, "-c", code], **_outside(installed, tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "FROM " + installed[0] in proc.stdout
  print(proc.stdout)


@pytest.mark.parametrize("script", ["bpdjax-train", "bpdjax-decode", "bpdjax-ngram"])
def test_console_scripts_help_exits_0(installed, tmp_path, script):
  proc = subprocess.run([os.path.join(installed[1], script), "--help"],
                        **_outside(installed, tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--workdir" in proc.stdout + proc.stderr


def test_config_flag_falls_back_to_the_installed_configs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)                  # No configs/ folder here.
  from bpdjax import configs  # pylint: disable=g-import-not-at-top
  resolved = configuration.config_file("configs/tiny.py")
  # The configs package in use: the checkout's in a dev install, site-packages' under CI.
  assert resolved == os.path.join(os.path.dirname(configs.__file__), "tiny.py")
  assert os.path.isfile(resolved)
  assert configuration.config_file("configs/nope.py") == "configs/nope.py"
  assert configuration.config_file("configs/finetune.py:squad") == os.path.join(
      os.path.dirname(configs.__file__), "finetune.py") + ":squad"
  assert configuration.resolve_config_flag(["x", "--config=configs/tiny.py", "--workdir=w"]) == [
      "x", f"--config={resolved}", "--workdir=w"]


def test_installed_package_builds_kenlm_outside_site_packages(installed, tmp_path):
  """An installed bpdjax ships its KenLM build script and looks for / builds lmplz under the
  user's cache, not in site-packages (where a checkout-relative path pointed before)."""
  code = ("import os\nfrom bpdjax.ngram import estimate\n"
          "print(estimate.kenlm_prefix(), os.path.isfile(estimate.BUILD_SCRIPT))\n")
  run = _outside(installed, tmp_path)
  run["env"]["XDG_CACHE_HOME"] = str(tmp_path / "cache")
  proc = subprocess.run([sys.executable, "-c", code], **run)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == [str(tmp_path / "cache" / "bpdjax" / "kenlm"), "True"]
