"""The demo pipeline at a tiny size: every artefact exists and is well formed."""
import importlib.util
import json
import os

import pytest

from tests import helpers

# A small NeXtVLAD instead of the demo's (hidden 2048), in batches of 8 instead of 80:
# the pipeline is what is tested.
TINY = ("--nextvlad_cluster_size=4 --nextvlad_hidden_size=16 --groups=2 --expansion=1 "
        "--batch_size=8")


def test_demo_at_tiny_scale_writes_every_artefact(tmp_path, monkeypatch):
  from tools import demo, frame_selection_table, student_table
  # The tools run here; the commands they run go through this test process's forking
  # server (helpers.run_cli), as they would through their own.
  monkeypatch.setattr(demo.Runner, "execute", lambda self, script, args: helpers.run_cli(
      script, args, check=False, timeout=600))
  out = tmp_path / "demo"
  assert demo.main(["--out_dir=" + str(out), "--scale=0.01",
                    "--model_flags=" + TINY]) == 0

  table = [l for l in (out / "results.md").read_text().splitlines() if l.startswith("|")]
  header, rows = table[0], table[2:]
  assert header.split("|")[1:-1][0].strip() == "model" and len(rows) == 3
  for row in rows:
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert len(cells) == 8
    gap, gflops, rate = float(cells[2]), float(cells[6]), float(cells[7])
    assert 0 <= gap <= 1 and gflops > 0 and rate > 0
  frames = [row.split("|")[2].strip() for row in rows]
  assert frames == ["300", "6", "6"]
  teacher_flops, student_flops = [float(r.split("|")[7]) for r in rows[:2]]
  assert student_flops < 0.2 * teacher_flops

  csv = (out / "predictions.csv").read_text().splitlines()
  assert csv[0] == "VideoId,LabelConfidencePairs" and len(csv) == 1 + 10
  for line in csv[1:]:
    video_id, pairs = line.split(",")
    scores = [float(v) for v in pairs.split()[1::2]]
    assert video_id and len(scores) == 20 and scores == sorted(scores, reverse=True)

  commands = (out / "commands.txt").read_text().splitlines()
  trains = [c for c in commands if c.startswith(os.path.join(helpers.ROOT, "train.py"))]
  assert len(trains) == 3 and "--model_type=KD" in trains[2]
  assert "--teacher_cache=%s" % (out / "teacher_cache_s0") in trains[2]  # offline KD
  for suffix in ("teacher", "student_k_6", "KD_k_6"):
    assert (out / "runs" / ("demo_s0_" + suffix) / "validation.jsonl").exists()
  png = out / "gap_vs_step.png"
  if importlib.util.find_spec("matplotlib"):
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

  # The frame-selection table on the tiny demo: one row and the KD row at k=6 (distilled
  # offline from the demo's teacher through a teacher cache), 2 training steps per cell.
  assert frame_selection_table.main([
      "--demo_dir=" + str(out), "--scale=0.01", "--ks=6", "--rows=first",
      "--model_flags=" + TINY]) == 0
  table = (out / "frame_selection_table.md").read_text().splitlines()
  assert table[0].startswith("Teacher (all frames): GAP 0.")
  assert table[2] == "| frames picked | k=6 |"
  cells = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in table[4:]}
  assert list(cells) == ["First-k", "KD student"]
  assert all(0 < gap <= 1 for gap in cells.values())
  kd_run = out / "table_runs" / "kd_s0_KD_k_6"
  kd = [json.loads(l) for l in open(str(kd_run / "eval.jsonl"))]
  assert cells["KD student"] == float("%.4f" % kd[-1]["gap"])
  assert json.load(open(str(kd_run / "model_flags.json")))["teacher_cache"]["digest"]
  assert (out / "teacher_cache_s0" / "fingerprint.json").exists()  # the demo's
  assert (out / "table_runs" / "first_s0_student_k_6" / "eval.jsonl").exists()

  # The students table on the tiny demo: FrameLevelLogistic at k=2 trained alone and
  # distilled from the demo's cache, and a NeXtVLAD distilled from a 2-branch
  # MixNeXtVLAD teacher; speed at two small batch sizes.
  assert student_table.main([
      "--demo_dir=" + str(out), "--scale=0.01", "--ks=2", "--students=logistic",
      "--mix_number=2", "--large_batch=8", "--speed_videos=16",
      "--model_flags=" + TINY]) == 0
  rows = [l.split("|")[1:-1] for l in (out / "student_table.md").read_text().splitlines()
          if l.startswith("| ") and not l.startswith("| model")]
  cells = {(r[0].strip(), r[2].strip()): [c.strip() for c in r] for r in rows}
  assert set(cells) == {("NeXtVLAD teacher", "alone"), ("MixNeXtVLAD teacher", "alone"),
                        ("FrameLevelLogistic", "alone"),
                        ("FrameLevelLogistic", "distilled"),
                        ("NeXtVLAD", "from the mixture")}
  teacher_gap = float(cells[("NeXtVLAD teacher", "alone")][3])
  assert teacher_gap == float(table[0].split("GAP ")[1])  # the same eval record
  alone, distilled = cells[("FrameLevelLogistic", "alone")], cells[
      ("FrameLevelLogistic", "distilled")]
  assert alone[5:] == distilled[5:]  # one model, one measurement
  assert float(alone[5]) == pytest.approx((1152 * 200 + 200) / 1e6, abs=0.006)
  for row in cells.values():
    assert 0 < float(row[3]) <= 1 and float(row[6]) > 0 and float(row[7]) > 0
  recorded = json.load(open(str(out / "student_table.json")))
  assert {r["trained"] for r in recorded["rows"]} == {"alone", "distilled"}
  assert recorded["teacher"]["cost"] > 0
  mix_flags = json.load(open(str(out / "student_runs" / "mix2_s0_full_KD_k_2" /
                                 "model_flags.json")))
  assert mix_flags["teacher_model"]["model"] == "MixNeXtVladModel"
  text = (out / "student_table.md").read_text()
  assert "Distilled frontier at or above the alone frontier at every cost:" in text
  if importlib.util.find_spec("matplotlib"):
    assert (out / "student_table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
