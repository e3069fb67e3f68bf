"""Shared test fixtures: tiny generated datasets and running the CLIs as a user would."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A NeXtVLAD small enough for a training step in milliseconds.
TINY_MODEL = ["--nextvlad_cluster_size=4", "--nextvlad_hidden_size=16", "--groups=2",
              "--expansion=1", "--gating_reduction=4", "--num_classes=20"]

DOCUMENTED_COMMAND = (
    '--feature_names="rgb,audio" --feature_sizes="1024,128" --groups=8 '
    '--nextvlad_cluster_size=128 --nextvlad_hidden_size=2048 --expansion=2 '
    '--gating_reduction=8 --drop_rate=0.5 --model=NeXtVLADModel --num_readers=8 '
    '--learning_rate_decay_examples 2000000  --video_level_classifier_model=LogisticModel '
    '--label_loss=CrossEntropyLoss --train_data_pattern=/data/yt8m/train*.tfrecord '
    '--frame_features=True   --batch_size=80 --base_learning_rate=0.0002  '
    '--learning_rate_decay=0.8 --l2_penalty=1e-5 --max_step=700000 --num_gpu=2 '
    '--export_model_steps=200 --train_dir=nextvlad_8g_5l2_5drop_128k_2048_2x80_logistic  '
    '--visible_gpu="1"  --start_new_model=False --k_frame=30 --model_type=KD')


def make_dataset(directory, train_videos=24, validate_videos=12, num_classes=20,
                 seed=1, **kwargs):
  """Writes a small synthetic YouTube-8M dataset; returns (train, validate) patterns."""
  from tools import make_synthetic_yt8m
  make_synthetic_yt8m.write_dataset(
      str(directory), train_videos=train_videos, validate_videos=validate_videos,
      num_classes=num_classes, num_verticals=4, seed=seed, shards=2, video_level=False,
      log=None, **kwargs)
  return (os.path.join(str(directory), "frame", "train*.tfrecord"),
          os.path.join(str(directory), "frame", "validate*.tfrecord"))


def run_cli(script, args, cwd=None, env=None, check=True, timeout=300):
  """Runs `python <script> args...` from the repo; returns the CompletedProcess."""
  full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
  full_env.update(env or {})
  process = subprocess.run([sys.executable, os.path.join(ROOT, script)] + list(args),
                           cwd=cwd, env=full_env, capture_output=True, text=True,
                           timeout=timeout)
  if check and process.returncode != 0:
    raise AssertionError("%s %s failed (%d):\n%s\n%s" % (
        script, " ".join(args), process.returncode, process.stdout,
        process.stderr[-3000:]))
  return process


def user_error_line(process):
  """The one-line error a failed CLI printed (asserts there is exactly one such line)."""
  lines = [l for l in process.stderr.splitlines()
           if l and not l.startswith(("WARNING: All log", "I0000", "W0000", "E0000"))]
  assert len(lines) == 1, process.stderr
  assert "Traceback" not in process.stderr
  return lines[0]
