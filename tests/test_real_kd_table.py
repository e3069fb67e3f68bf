"""tools/real_kd_table.py at a tiny size on four official video-level shards."""
import json
import os

import pytest

from tests import helpers
from tools import demo as demo_tool
from tools import real_kd_table

DATA = os.path.join(helpers.ROOT, "tests", "data", "yt8m2018_video")


def test_the_real_kd_table_at_tiny_size(tmp_path, monkeypatch):
  monkeypatch.setattr(demo_tool.Runner, "execute",
                      lambda self, script, args: helpers.run_cli(
                          script, args, check=False, timeout=600))
  out = tmp_path / "real"
  assert real_kd_table.main([
      "--data_dir=" + DATA, "--out_dir=" + str(out), "--train_shards=validate019[67]*",
      "--tune_shards=validate0198*", "--held_out_shards=validate0199*", "--seeds=0,1",
      "--mixtures=2", "--select=pred_x3,logits_t2", "--select_seeds=0,1",
      "--option=pred_kl+pred_x1", "--train_flags=--max_steps=3 --batch_size=64"]) == 0
  results = json.load(open(str(out / "real_kd_table.json")))

  def records(kind, seed):
    run, = (out / "runs").glob("logistic_%s_s%d_*" % (kind.replace("+", "_"), seed))
    flags = json.load(open(str(run / "model_flags.json")))
    assert flags["model"] == "LogisticModel" and not flags["frame_features"]
    return flags, {os.path.basename(r["data"]): r["gap"]
                   for r in map(json.loads, open(str(run / "eval.jsonl")))}

  # The selection: each screened option's paired gain on the tune shard, the best chosen.
  selection = results["selection"]
  assert set(selection) == {"recipe", "pred_x3", "logits_t2"}
  for kind, (mean, se, n) in selection.items():
    tune = [records(kind, s)[1] for s in (0, 1)]
    alone = [records("alone", s)[1] for s in (0, 1)]
    differences = [kd["validate0198*"] - a["validate0198*"] for kd, a in zip(tune, alone)]
    assert n == 2 and mean == pytest.approx(sum(differences) / 2, abs=1e-12)
  assert results["chosen"] == max(selection, key=lambda kind: selection[kind][0])
  # The held-out table: the recipe, the choice and --option, each run's held-out record.
  reported = {"recipe", results["chosen"], "pred_kl+pred_x1"}
  gaps = {(g["kind"], g["seed"]): g["gap"] for g in results["gaps"]}
  assert set(gaps) == {(k, s) for k in reported | {"alone"} for s in (0, 1)}
  for kind, seed in gaps:
    flags, by_split = records(kind, seed)
    assert by_split["validate0199*"] == gaps[(kind, seed)]
    if kind == "pred_kl+pred_x1":
      assert (flags["kd_pred_loss"], flags["kd_weights"], flags["kd_shares"]) == (
          "kl", "balanced", "0.5,0.5,0.0")
  for kind in reported:
    mean, se, n = results["paired"][kind]
    differences = [gaps[(kind, s)] - gaps[("alone", s)] for s in (0, 1)]
    assert n == 2 and mean == pytest.approx(sum(differences) / 2, abs=1e-12)
  # The teacher was chosen on the tune shard and reported on the held-out one.
  assert [t["name"] for t in results["teacher"]["tune"]] == ["moe2"]
  table = (out / "real_kd_table.md").read_text()
  assert table.startswith("Held-out split validate0199*; teacher moe2 (trained on "
                          "validate019[67]*")
  assert "chosen: %s" % results["chosen"] in table
  # Its runs are not reused for other splits or training flags.
  same = ["--data_dir=" + DATA, "--out_dir=" + str(out), "--tune_shards=validate0198*",
          "--held_out_shards=validate0199*", "--mixtures=2"]
  with pytest.raises(SystemExit, match=r"holds runs with --train_shards=validate019\[67\]"):
    real_kd_table.main(same + ["--train_shards=validate0196*",
                               "--train_flags=--max_steps=3 --batch_size=64"])
  with pytest.raises(SystemExit, match="holds runs with --train_flags=--max_steps=3 "):
    real_kd_table.main(same + ["--train_shards=validate019[67]*"])


def test_an_unknown_option_is_refused_before_anything_runs(tmp_path):
  with pytest.raises(SystemExit, match="unknown option 'pred_x7'"):
    real_kd_table.main(["--data_dir=" + DATA, "--out_dir=" + str(tmp_path / "real"),
                        "--select=pred_x7"])
  assert not (tmp_path / "real").exists()


def test_a_teacher_split_must_not_overlap_the_students(tmp_path):
  with pytest.raises(SystemExit, match="is in both the train and the teacher split"):
    real_kd_table.main(["--data_dir=" + DATA, "--out_dir=" + str(tmp_path / "real"),
                        "--train_shards=validate019[67]*", "--tune_shards=validate0198*",
                        "--held_out_shards=validate0199*", "--teacher_shards=validate0197*"])


def test_the_starter_l2_penalty_is_the_models():
  import video_level_models
  assert real_kd_table.STARTER_L2 == video_level_models.L2_PENALTY
  assert real_kd_table.teacher_name(8, 1e-8) == "moe8"  # the runs measured before
  assert real_kd_table.teacher_name(8, 1e-5) == "moe8_l2_1e-05"


def test_a_bad_teacher_grid_is_refused_in_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit):
    real_kd_table.main(["--data_dir=" + DATA, "--out_dir=" + str(tmp_path / "real"),
                        "--l2_penalties=1e-3,lots"])
  assert "--l2_penalties numbers" in capsys.readouterr().err
  assert not (tmp_path / "real").exists()
