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
      "--mixtures=2", "--option=logits_t2",
      "--train_flags=--max_steps=3 --batch_size=64"]) == 0
  results = json.load(open(str(out / "real_kd_table.json")))
  gaps = {(g["kind"], g["seed"]): g["gap"] for g in results["gaps"]}
  assert set(gaps) == {(k, s) for k in ("alone", "recipe", "logits_t2") for s in (0, 1)}
  held_out = os.path.join(DATA, "validate0199.tfrecord")
  for kind, seed in gaps:  # each GAP is its run's eval.py record on the held-out shard
    run, = (out / "runs").glob("logistic_%s_s%d_*" % (kind, seed))
    record = [json.loads(l) for l in open(str(run / "eval.jsonl"))][-1]
    assert record["gap"] == gaps[(kind, seed)]
    assert record["data"].endswith("validate0199*")
    flags = json.load(open(str(run / "model_flags.json")))
    assert flags["model"] == "LogisticModel" and not flags["frame_features"]
    if kind == "logits_t2":
      assert (flags["kd_pred_loss"], flags["kd_temperature"]) == ("logits_kl", 2.0)
  for kind in ("recipe", "logits_t2"):
    mean, se, n = results["paired"][kind]
    differences = [gaps[(kind, s)] - gaps[("alone", s)] for s in (0, 1)]
    assert n == 2 and mean == pytest.approx(sum(differences) / 2, abs=1e-12)
  # The teacher was chosen on the tune shard and reported on the held-out one.
  assert [t["mixtures"] for t in results["teacher"]["tune"]] == [2]
  table = (out / "real_kd_table.md").read_text()
  assert table.startswith("Held-out split validate0199*; teacher MoeModel (2 mixtures")
  assert os.path.exists(held_out)
