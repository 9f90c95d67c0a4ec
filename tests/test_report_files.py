"""decode.py touches only what it wrote: an older report set goes by the exact names its own
report.json lists, each resolved inside --output; a name that leads outside is refused before
anything is removed, and a user's files (no report.json of ours naming them) stay."""
import json
import os

import pytest

from bpdjax.eval import report
from bpdjax.eval import run as run_lib
from tests import helpers


def _report_json(output, tasks):
  (output / "report.json").write_text(json.dumps({"settings": {}, "tasks": {t: {} for t in tasks}}))


def test_a_report_json_naming_files_outside_output_touches_nothing(tmp_path):
  output = tmp_path / "out"
  output.mkdir()
  (tmp_path / "victim.png").write_text("a user's picture")
  (tmp_path / "v.png").mkdir()                                # A folder of that name, too.
  (tmp_path / "v.png" / "keep.txt").write_text("kept")
  _report_json(output, ["lambada", "../victim", "../v"])
  (output / "lambada.png").write_text("old plot")
  with pytest.raises(ValueError, match=r"'../victim.png' does not name a file inside --output"):
    report.clear(str(output), ["lambada"])
  assert (tmp_path / "victim.png").read_text() == "a user's picture"
  assert (tmp_path / "v.png" / "keep.txt").read_text() == "kept"
  assert (output / "report.json").exists() and (output / "lambada.png").exists()


def test_a_symlink_out_of_output_is_refused(tmp_path):
  output = tmp_path / "out"
  output.mkdir()
  (tmp_path / "target.png").write_text("elsewhere")
  os.symlink(tmp_path / "target.png", output / "lambada.png")
  _report_json(output, ["lambada"])
  with pytest.raises(ValueError, match="outside --output"):
    report.clear(str(output), [])
  assert (tmp_path / "target.png").read_text() == "elsewhere"


def test_only_the_files_of_our_own_older_set_are_removed(tmp_path):
  output = tmp_path / "out"
  output.mkdir()
  for name in ("notes.txt", "squad.png"):
    (output / name).write_text("the user's")
  (output / "report.md").write_text("the user's own report")  # No report.json: not ours.
  report.clear(str(output), ["squad", "lambada"])
  assert sorted(os.listdir(output)) == ["notes.txt", "report.md", "squad.png"]
  _report_json(output, ["lambada"])                           # Our older set: lambada only.
  (output / "lambada.png").mkdir()                            # A folder is never removed.
  report.clear(str(output), ["squad"])
  assert sorted(os.listdir(output)) == ["lambada.png", "notes.txt", "squad.png"]


def test_a_failed_write_removes_only_what_it_wrote(tmp_path, monkeypatch):
  output = tmp_path / "out"
  output.mkdir()
  (output / "notes.txt").write_text("the user's")
  monkeypatch.setattr(report, "markdown", lambda r: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    report.write(str(output), {"tasks": {}, "settings": {}})
  assert os.listdir(output) == ["notes.txt"]


def test_decode_run_refuses_before_touching_anything(trained_tiny_workdir, tmp_path):
  output = tmp_path / "out"
  output.mkdir()
  (tmp_path / "victim.png").write_text("a user's picture")
  _report_json(output, ["../victim"])
  settings = helpers.decode_settings(workdir=trained_tiny_workdir, output=str(output),
                                     tasks="lambada", methods="ar", num_examples=1,
                                     max_new_tokens=4)
  with pytest.raises(ValueError, match="does not name a file inside --output"):
    run_lib.run(settings, log=lambda _: None)
  assert (tmp_path / "victim.png").read_text() == "a user's picture"
