"""The demo pipeline at a tiny size: every artefact exists, is well formed and holds
the numbers of the runs it reports."""
import glob
import hashlib
import json
import os
import re

import pytest

from tests import helpers
from tools import demo as demo_tool
from tools import kd_table as kd_tool
from tools import student_table as student_tool

# A small NeXtVLAD instead of the demo's (hidden 2048), in batches of 8 instead of 80:
# the pipeline is what is tested.
TINY = ("--nextvlad_cluster_size=4 --nextvlad_hidden_size=16 --groups=2 --expansion=1 "
        "--batch_size=8")
PNG = b"\x89PNG\r\n\x1a\n"
EVAL_LINE = re.compile(r"^eval \((\w+)\): .*\| GAP: ([0-9.]+) \|", re.M)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
  """The tiny demo's directory after tools/demo.py, tools/frame_selection_table.py and
  tools/student_table.py ran on it."""
  from tools import frame_selection_table
  out = tmp_path_factory.mktemp("demo") / "demo"
  with pytest.MonkeyPatch.context() as monkeypatch:
    # The tools run here; the commands they run go through this test process's forking
    # server (helpers.run_cli), as they would through their own.
    monkeypatch.setattr(demo_tool.Runner, "execute",
                        lambda self, script, args: helpers.run_cli(
                            script, args, check=False, timeout=600))
    assert demo_tool.main(["--out_dir=" + str(out), "--scale=0.01",
                           "--model_flags=" + TINY]) == 0
    # The frame-selection table: one row and the KD row at k=6 (distilled offline from
    # the demo's teacher through its teacher cache), 2 training steps per cell.
    assert frame_selection_table.main([
        "--demo_dir=" + str(out), "--scale=0.01", "--ks=6", "--rows=first",
        "--model_flags=" + TINY]) == 0
    # The students table: FrameLevelLogistic at k=2 trained alone and distilled from
    # the demo's cache, and a NeXtVLAD distilled from a 2-branch MixNeXtVLAD teacher;
    # speed at two small batch sizes; the quantized rows (--quantized's default:
    # dynamic and int8 files of both distilled students, the teacher's dynamic file).
    assert student_tool.main([
        "--demo_dir=" + str(out), "--scale=0.01", "--ks=2", "--students=logistic",
        "--mix_number=2", "--large_batch=8", "--speed_videos=16",
        "--model_flags=" + TINY]) == 0
    # The KD study: two options and their combination screened on 2 seeds against the
    # held-out training shard, the choice confirmed for FrameLevelLogistic on 2 others.
    assert kd_tool.main([
        "--demo_dir=" + str(out), "--scale=0.01", "--select_seeds=0,1",
        "--confirm_seeds=3,4", "--options=rep_none,logits_t2", "--students=logistic",
        "--mix_number=0", "--model_flags=" + TINY]) == 0
  return out


def last_record(path):
  with open(str(path)) as f:
    return [json.loads(line) for line in f if line.strip()][-1]


def test_demo_at_tiny_scale_writes_every_artefact(out):
  table = [l for l in (out / "results.md").read_text().splitlines() if l.startswith("|")]
  header, rows = table[0], table[2:]
  assert header.split("|")[1:-1][0].strip() == "model" and len(rows) == 4
  for row, suffix in zip(rows[:3], ("teacher", "student_k_6", "KD_k_6")):
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert len(cells) == 8
    # The row's metrics are its run's eval.py record of its last checkpoint, which
    # training validated (2 steps) on the same videos.
    run = out / "runs" / ("demo_s0_" + suffix)
    record = last_record(run / "eval.jsonl")
    assert (record["checkpoint"], record["num_examples"]) == ("model.ckpt-2", 10)
    assert [float(c) for c in cells[2:6]] == [float("%.4f" % record[k]) for k in (
        "gap", "map_all_classes", "hit_at_one", "perr")], suffix
    validated = last_record(run / "validation.jsonl")
    assert validated["step"] == 2
    assert validated["gap"] == pytest.approx(record["gap"], abs=1e-6), suffix
    gflops, rate = float(cells[6]), float(cells[7])
    assert 0 < record["gap"] <= 1 and gflops > 0 and rate > 0
  frames = [row.split("|")[2].strip() for row in rows]
  assert frames == ["300", "6", "6", "6"]
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
  assert len(trains) >= 3 and "--model_type=KD" in trains[2]
  assert "--teacher_cache=%s" % (out / "teacher_cache_s0") in trains[2]  # offline KD


def file_gap(path, validate):
  """(quantization, GAP) of eval.py --tflite_model's metric line for a file."""
  out = helpers.run_cli("eval.py", ["--tflite_model=" + str(path),
                                    "--eval_data_pattern=" + validate,
                                    "--batch_size=100"]).stdout
  (quantization, gap), = EVAL_LINE.findall(out)
  return quantization, float(gap)


def test_the_demo_reports_its_distilled_student_as_a_dynamic_file(out):
  """The table's last row is the KD student exported with --tflite=dynamic, evaluated
  and timed through --tflite_model; results.json holds its record."""
  row = [l for l in (out / "results.md").read_text().splitlines()
         if l.startswith("|")][-1]
  cells = [c.strip() for c in row.split("|")[1:-1]]
  assert cells[0] == "distilled student, dynamic int8 file"
  tflite = out / "exports" / "KD_s0_dynamic" / "model.tflite"
  sidecar = json.load(open(str(tflite) + ".json"))
  assert (sidecar["quantization"], sidecar["role"], sidecar["checkpoint"]) == (
      "dynamic", "student", "model.ckpt-2")
  assert sidecar["tflite_bytes"] == tflite.stat().st_size
  assert sidecar["model_flags"]["k_frame"] == 6
  # Its GAP is the file's eval.py line, which the test reads again.
  validate = str(out / "data" / "frame" / "validate*.tfrecord")
  quantization, gap = file_gap(tflite, validate)
  assert quantization == "dynamic" and float(cells[2]) == gap
  recorded = json.load(open(str(out / "results.json")))
  by_kind = {r["kind"]: r["records"] for r in recorded["rows"]}
  assert list(by_kind) == ["teacher", "student", "KD", "KD_dynamic"]
  record, = by_kind["KD_dynamic"]
  assert record["gap"] == gap and record["quantization"] == "dynamic"
  assert record["file"] == str(tflite) and record["file_bytes"] == tflite.stat().st_size
  assert record["videos_per_second"] > 0 and float(cells[7]) > 0
  # The model's FLOPs are the float32 student's; both rows carry their own GAP.
  kd, = by_kind["KD"]
  assert record["gflops"] == kd["gflops"] and cells[6] == row_cells(out, 3)[6]
  csv = (out / "predictions_KD_dynamic_s0.csv").read_text().splitlines()
  assert csv[0] == "VideoId,LabelConfidencePairs" and len(csv) == 1 + 10
  commands = (out / "commands.txt").read_text()
  assert "--tflite=dynamic" in commands and "--tflite_model=%s" % tflite in commands


def row_cells(out, index):
  """The cells of the demo table's row `index` (1-based, after the header)."""
  rows = [l for l in (out / "results.md").read_text().splitlines() if l.startswith("|")]
  return [c.strip() for c in rows[index + 1].split("|")[1:-1]]


def test_the_kd_runs_record_the_digest_of_the_cache_of_the_demos_teacher(out):
  cache = out / "teacher_cache_s0"
  stored = json.load(open(str(cache / "fingerprint.json")))
  fingerprint = stored["fingerprint"]
  # The digest names the fingerprint without the teacher's location.
  identity = {k: v for k, v in fingerprint.items() if k != "teacher_checkpoint"}
  assert stored["digest"] == hashlib.sha256(
      json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:16]
  # ... which holds the teacher's checkpoint and the training shards as they are.
  teacher = out / "runs" / "demo_s0_teacher" / "model.ckpt-2"
  assert fingerprint["teacher_checkpoint"] == str(teacher)
  assert fingerprint["teacher_checkpoint_sha256"] == hashlib.sha256(
      open(str(teacher) + ".index", "rb").read()).hexdigest()
  shards = sorted((out / "data" / "frame").glob("train*.tfrecord"))
  # (named relative to their common directory, so data and cache may move together)
  assert fingerprint["files"] == [[p.name, p.stat().st_size] for p in shards]
  assert len(shards) == 4
  # Both KD students (the demo's and the frame-selection table's) used that cache.
  for run in (out / "runs" / "demo_s0_KD_k_6", out / "table_runs" / "kd_s0_KD_k_6"):
    recorded = json.load(open(str(run / "model_flags.json")))["teacher_cache"]
    assert recorded["digest"] == stored["digest"], run
    assert recorded["teacher_checkpoint"] == str(teacher)


def test_the_frame_selection_table_on_the_tiny_demo(out):
  table = (out / "frame_selection_table.md").read_text().splitlines()
  teacher = last_record(out / "runs" / "demo_s0_teacher" / "eval.jsonl")
  assert table[0].startswith("Teacher (all frames): GAP 0.")
  assert float(table[0].split("GAP ")[1]) == float("%.4f" % teacher["gap"])
  assert table[2] == "| frames picked | k=6 |"
  cells = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in table[4:]}
  assert list(cells) == ["First-k", "KD student"]
  assert all(0 < gap <= 1 for gap in cells.values())
  for row, run in (("KD student", "kd_s0_KD_k_6"), ("First-k", "first_s0_student_k_6")):
    record = last_record(out / "table_runs" / run / "eval.jsonl")
    assert cells[row] == float("%.4f" % record["gap"]), row


def test_the_student_table_on_the_tiny_demo(out):
  table = (out / "frame_selection_table.md").read_text().splitlines()
  rows = [l.split("|")[1:-1] for l in (out / "student_table.md").read_text().splitlines()
          if l.startswith("| ") and not l.startswith("| model")]
  cells = {(r[0].strip(), r[2].strip()): [c.strip() for c in r] for r in rows}
  quantized = {key: row for key, row in cells.items() if "," in key[1]}
  for key in quantized:
    del cells[key]
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
  for row in recorded["rows"]:  # the table shows the recorded rows
    trained = row["trained"] if row["teacher"] == "teacher" else "from the mixture"
    assert float(cells[(row["label"], trained)][3]) == float("%.4f" % row["gap"])
  check_quantized_rows(out, recorded, cells, quantized)
  mix_flags = json.load(open(str(out / "student_runs" / "mix2_s0_full_KD_k_2" /
                                 "model_flags.json")))
  assert mix_flags["teacher_model"]["model"] == "MixNeXtVladModel"
  # The verdict is frontier_check's on the recorded rows.
  met, failures = student_tool.frontier_check(recorded["rows"])
  verdict, = [l for l in (out / "student_table.md").read_text().splitlines()
              if l.startswith("Distilled frontier at or above the alone frontier")]
  assert verdict == ("Distilled frontier at or above the alone frontier at every cost: "
                     + ("yes" if met else "NO (%s)" % "; ".join(failures)))


def check_quantized_rows(out, recorded, cells, quantized):
  """The student table's quantized rows: the teacher's dynamic file and both distilled
  students' dynamic and int8 files (or a line saying which did not convert), each
  row's GAP its file's eval.py line, its model's parameters and FLOPs."""
  text = (out / "student_table.md").read_text()
  wanted = {("NeXtVLAD teacher", "alone, dynamic", "teacher"),
            ("FrameLevelLogistic", "distilled, dynamic", "logistic"),
            ("FrameLevelLogistic", "distilled, int8", "logistic"),
            ("NeXtVLAD", "from the mixture, dynamic", "mix"),
            ("NeXtVLAD", "from the mixture, int8", "mix")}
  records = recorded["quantized"]
  assert len(records) == len(wanted)
  converted = [r for r in records if "error" not in r]
  assert {r["quantization"] for r in converted} >= {"dynamic"}
  assert len([r for r in converted if r["quantization"] == "dynamic"]) == 3
  float_row = {"teacher": cells[("NeXtVLAD teacher", "alone")],
               "logistic": cells[("FrameLevelLogistic", "distilled")],
               "mix": cells[("NeXtVLAD", "from the mixture")]}
  validate = str(out / "data" / "frame" / "validate*.tfrecord")
  for label, trained, model in wanted:
    mode = trained.split(", ")[1]
    record, = [r for r in records if r["label"] == label and r["quantization"] == mode
               and (r["teacher"] == "MixNeXtVLAD") == (model == "mix")]
    if "error" in record:  # int8 where TensorFlow Lite refuses it: said under the table
      assert mode == "int8" and (label, trained) not in quantized
      assert "Not converted (int8): %s k=%d" % (label, record["k"]) in text
      continue
    row = quantized[(label, trained)]
    sidecar = json.load(open(record["file"] + ".json"))
    assert sidecar["quantization"] == mode
    assert sidecar["role"] == ("teacher" if model == "teacher" else "student")
    if mode == "int8":  # calibrated on the table's training shards
      assert sidecar["calibration"]["data_pattern"] == str(
          out / "data" / "frame" / "train*.tfrecord")
    assert file_gap(record["file"], validate) == (mode, record["gap"])
    assert float(row[3]) == record["gap"]
    assert row[1] == ("300" if model == "teacher" else "2")
    assert row[5:7] == float_row[model][5:7]  # the same model's parameters and FLOPs
    assert float(row[7]) > 0 and float(row[9]) > 0 and float(row[11]) > 0
  # Speed-ups at equal precision: the quantized rows' are over the teacher's file.
  teacher = quantized[("NeXtVLAD teacher", "alone, dynamic")]
  assert teacher[8] == teacher[10] == "1.0x"
  assert "speed-up is over the NeXtVLAD teacher's dynamic file" in text


def test_the_plots_are_pngs(out):
  pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib "
                      "(requirements-demo.txt); without it the tools write none")
  for name in ("gap_vs_step.png", "student_table.png"):
    png = (out / name).read_bytes()
    assert png[:8] == PNG and len(png) > 5000, name


def row(cost, gap, trained, teacher="teacher"):
  return {"cost": cost, "gap": gap, "trained": trained, "teacher": teacher}


@pytest.mark.parametrize("rows, met, failures", [
    # Distilled at or above at every cost the alone students reach.
    ([row(1e-3, 0.5, "alone"), row(2e-3, 0.6, "alone"), row(1e-3, 0.5, "distilled"),
      row(1.5e-3, 0.7, "distilled")], True, []),
    # A cheaper distilled student counts at a dearer cost (the frontier is a step).
    ([row(2e-3, 0.6, "alone"), row(1e-3, 0.65, "distilled")], True, []),
    # Below at one cost: said with both GAPs.
    ([row(1e-3, 0.5, "alone"), row(2e-3, 0.8, "alone"), row(1e-3, 0.55, "distilled"),
      row(2e-3, 0.7, "distilled")], False,
     ["at 2 CPU ms/video: alone 0.8000, distilled 0.7000"]),
    # No distilled student as cheap as the cheapest alone one; students distilled from
    # another teacher (the mixture) are not on the distilled frontier.
    ([row(1e-3, 0.5, "alone"), row(2e-3, 0.6, "distilled"),
      row(5e-4, 0.9, "distilled", teacher="mix")], False,
     ["at 1 CPU ms/video: alone 0.5000, distilled none"]),
])
def test_the_frontier_check(rows, met, failures):
  assert student_tool.frontier_check(rows) == (met, failures)


def test_the_kd_table_on_the_tiny_demo(out):
  recorded = json.load(open(str(out / "kd_table.json")))
  records = recorded["records"]
  held_out = os.path.realpath(str(out / "data" / "frame" / kd_tool.SELECT_HELD_OUT))
  for r in records:  # every GAP is its run's eval.py record, on its phase's split
    record = last_record(os.path.join(r["run"], "eval.jsonl"))
    assert r["gap"] == record["gap"], r["run"]
    validated = {os.path.realpath(p) for p in glob.glob(record["data"])}
    assert (validated == {held_out}) == (r["phase"] == "select"), r["run"]
    assert r["phase"] == "select" or held_out not in validated, r["run"]
  # The selection's teacher never saw the held-out shard.
  cache, = (out / "kd_runs" / "select").glob("teacher_nextvlad_s0_cache")
  cached_files = json.load(open(str(cache / "fingerprint.json")))["fingerprint"]["files"]
  assert len(cached_files) == 3 and all(
      kd_tool.SELECT_HELD_OUT not in json.dumps(f) for f in cached_files)

  def gaps(phase, student, teacher, option):
    return {r["seed"]: r["gap"] for r in records if (r["phase"], r["student"],
            r["teacher"], r["option"]) == (phase, student, teacher, option)}

  selection = recorded["selection"]
  assert {"recipe", "rep_none", "logits_t2"} <= set(selection)
  for option, by_teacher in selection.items():
    mean, se, n = by_teacher["nextvlad"]
    kd, alone = gaps("select", "full", "nextvlad", option), gaps("select", "full", None,
                                                                  None)
    differences = [kd[s] - alone[s] for s in (0, 1)]
    assert n == 2 and mean == pytest.approx(sum(differences) / 2, abs=1e-12)
    assert se == pytest.approx(abs(differences[0] - differences[1]) / 2, abs=1e-12)
  chosen = max(selection, key=lambda o: selection[o]["nextvlad"][0])
  assert recorded["chosen"] == chosen
  flags = json.load(open(str(out / "kd_runs" / "select" / "full_nextvlad_logits_t2_s0_KD_k_6"
                             / "model_flags.json")))
  assert (flags["kd_pred_loss"], flags["kd_temperature"]) == ("logits_kl", 2.0)
  rows = recorded["confirmation"]
  assert [(r["student"], r["option"]) for r in rows] == [("logistic", "recipe")] + (
      [("logistic", chosen)] if chosen != "recipe" else [])
  for row in rows:
    kd, alone = (gaps("confirm", "logistic", "nextvlad", row["option"]),
                 gaps("confirm", "logistic", None, None))
    assert sorted(kd) == [3, 4]
    assert row["paired_gain"][0] == pytest.approx(
        sum(kd[s] - alone[s] for s in kd) / 2, abs=1e-12)
  assert "Chosen: %s" % chosen in (out / "kd_table.md").read_text()


def test_the_teacher_diagnosis_on_the_tiny_demo(out, tmp_path):
  from tools import teacher_diagnosis
  # A KD run from the demo teacher's cache that logs its loss terms at every step (the
  # demo's runs log every 70 steps, none at this size).
  cache = out / "teacher_cache_s0"
  helpers.run_cli("train.py", demo_tool.MODEL_FLAGS + demo_tool.TRAIN_FLAGS + TINY.split() + [
      "--model_type=KD", "--k_frame=6", "--teacher_checkpoint=%s" % (
          out / "runs" / "demo_s0_teacher"), "--teacher_cache=%s" % cache,
      "--train_data_pattern=%s" % (out / "data" / "frame" / "train*.tfrecord"),
      "--train_dir=%s" % (tmp_path / "kd"), "--max_steps=2", "--log_every_n_steps=1",
      "--start_new_model=True"])
  output = str(tmp_path / "teacher_diagnosis")
  assert teacher_diagnosis.main([
      "--teacher=NeXtVLAD:%s:%s" % (cache, tmp_path / "kd_KD_k_6"),
      "--teacher=Mix:%s:" % (out / "student_runs" / "mix2_cache_s0"),
      "--data_pattern=" + str(out / "data" / "frame" / "train*.tfrecord"),
      "--output=" + output]) == 0
  results = json.load(open(output + ".json"))
  assert [r["label"] for r in results] == ["NeXtVLAD", "Mix"]
  for result in results:
    assert result["videos"] == demo_tool.TRAIN_VIDEOS * 0.01
    assert result["representation_width"] > 0 and result["representation_norm"] > 0
    assert 0 < result["probability_of_labels"] < 1
  assert results[1]["loss"] is None
  for which, step in (("first", 1), ("last", 2)):  # the weighted terms make the total
    loss = results[0]["loss"][which]
    shares = [loss[t + "_share"] for t in ("label_loss", "pred_loss", "rep_loss")]
    assert loss["step"] == step and sum(shares) == pytest.approx(1.0, abs=0.01), loss
  assert "| KD run, first logged step: L_rep (share of total) |" in open(
      output + ".md").read()
