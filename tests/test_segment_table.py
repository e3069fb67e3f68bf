"""tools/segment_table.py at a tiny size: the table, and the paired comparison over
seeds of the 2-frame student alone and distilled."""
import json

import pytest

from tests import helpers
from tools import demo as demo_tool
from tools import segment_table

TINY = "--nextvlad_cluster_size=4 --nextvlad_hidden_size=16 --groups=2 --batch_size=8"


def test_the_segment_table_with_paired_seeds(tmp_path, monkeypatch):
  monkeypatch.setattr(demo_tool.Runner, "execute",
                      lambda self, script, args: helpers.run_cli(
                          script, args, check=False, timeout=600))
  out = tmp_path / "segments"
  assert segment_table.main(["--out_dir=" + str(out), "--scale=0.01",
                             "--paired_seeds=1,2", "--options=recipe,rep_none",
                             "--model_flags=" + TINY]) == 0
  assert len([l for l in (out / "results.md").read_text().splitlines()
              if l.startswith("| student") or l.startswith("| teacher")]) == 6
  results = json.load(open(str(out / "paired.json")))
  gaps = {(g["option"], g["seed"]): g["gap"] for g in results["gaps"]}
  assert set(gaps) == {(o, s) for o in ("alone", "recipe", "rep_none") for s in (1, 2)}
  for (option, seed), gap in gaps.items():  # each its run's eval.py record
    run, = (out / "paired_runs").glob("%s_s%d_*" % (option, seed))
    assert [json.loads(l) for l in open(str(run / "eval.jsonl"))][-1]["gap"] == gap
    flags = json.load(open(str(run / "model_flags.json")))
    assert flags["segment_labels"] and flags["k_frame"] == 2
    assert flags["model_type"] == ("student" if option == "alone" else "KD")
    assert flags["kd_rep_loss"] == ("none" if option == "rep_none" else "mse")
    assert flags["nextvlad_hidden_size"] == 16
  for option in ("recipe", "rep_none"):
    mean, _, n = results["paired"][option]
    assert n == 2 and mean == pytest.approx(
        sum(gaps[(option, s)] - gaps[("alone", s)] for s in (1, 2)) / 2, abs=1e-12)
  assert "| distilled, rep_none |" in (out / "paired.md").read_text()
