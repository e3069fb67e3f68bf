"""Our DbofModel against TensorFlow Model Garden's YouTube-8M DBoF figures.

  python bench/bench_peer_dbof.py [--steps=4] [--videos=400] [--bf16]

The configuration of the peer's figures: DBoF cluster 8192, hidden 1024, max pooling,
batch norm, MoE with 2 mixtures, float32, batch 80; all frames (--iterations=300) and 30
sampled frames (--iterations=30). Training (train.py's graph) and evaluation
(eval.py's), both end to end through our reader over generated shards whose lengths
mix like YouTube-8M's (about half the videos at 300 frames, the rest 120-299). Each
case runs in its own process; peak RSS is that process's. The peer's numbers were
measured on this machine class (2 cores, AVX-512 with AVX512_BF16) with
tf-models-official 2.20 (Keras, its own tf.data pipeline).
"""
import argparse
import json

import common
import tensorflow as tf

tf1 = tf.compat.v1

DBOF = ["--model=DbofModel", "--dbof_cluster_size=8192", "--dbof_hidden_size=1024",
        "--dbof_pooling_method=max", "--dbof_add_batch_norm=True",
        "--video_level_classifier_model=MoeModel", "--moe_num_mixtures=2",
        "--sample_random_frames=True", "--feature_names=rgb,audio",
        "--feature_sizes=1024,128", "--frame_features=True", "--batch_size=80",
        "--num_readers=2", "--num_epochs=1000",
        # Model Garden does no PCA scaling: off, so both sides do the same work.
        "--pca_eigenvals="]
# Model Garden: (videos/s, peak RSS GiB), float32, batch 80.
PEER = {("train", 300): (9.6, 18.3), ("train", 30): (74.0, 4.0),
        ("eval", 300): (19.4, None), ("eval", 30): (198.0, None)}


def run_case(mode, frames, steps, data_pattern, extra_flags):
  """Times training or evaluation steps in this process; returns a dict."""
  import inference_graph
  import kd_model
  import readers
  import sessions
  import train
  import train_graph
  cfg, train_cfg = train.configs_of(DBOF + ["--iterations=%d" % frames,
                                            "--train_data_pattern=" + data_pattern] +
                                    list(extra_flags))
  if mode == "train":
    model = train_graph.TrainGraph(cfg, train_cfg, kd_model.training_task(cfg),
                                   ["/cpu:0"],
                                   train_files=readers.list_data_files(data_pattern))
    graph, fetch = model.graph, model.train_op
  else:
    graph = tf.Graph()
    with graph.as_default():
      batch = readers.get_input_data_tensors(readers.get_reader(cfg, dequantize=False),
                                             readers.list_data_files(data_pattern),
                                             80, 2, shuffle=False)
      fetch = inference_graph.top_k_outputs(cfg, batch, cfg.role(), 20,
                                            with_labels=False)["top_indices"]
  with graph.as_default():
    init = tf1.global_variables_initializer()
    with tf1.Session(config=sessions.session_config(cfg.bf16)) as sess:
      sess.run(init)
      seconds = common.time_runs(sess, fetch, steps)
  return {"mode": mode, "frames": frames, "videos_per_second": 80 / seconds,
          "peak_rss_mb": common.peak_rss_mb()}


def main():
  print(common.cpu_line(), flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--videos", type=int, default=400)
  parser.add_argument("--data_dir", default="/tmp/yt8m_bench_data_mix")
  parser.add_argument("--mode", choices=["train", "eval"])
  parser.add_argument("--frames", type=int)
  parser.add_argument("--data_pattern", default="")
  args, extra_flags = parser.parse_known_args()  # --bf16 and other model flags
  if args.mode:
    print(json.dumps(run_case(args.mode, args.frames, args.steps, args.data_pattern,
                              extra_flags)))
    return
  pattern = common.generated_data(args.data_dir, args.videos)
  rows = []
  for (mode, frames), (peer_rate, peer_rss) in sorted(PEER.items(), reverse=True):
    result = common.run_child(__file__, ["--mode=" + mode, "--frames=%d" % frames,
                                         "--steps=%d" % args.steps,
                                         "--data_pattern=" + pattern] + extra_flags)
    rows.append([mode, frames, "%.1f" % result["videos_per_second"], "%.1f" % peer_rate,
                 "%.2fx" % (result["videos_per_second"] / peer_rate),
                 "%.1f" % (result["peak_rss_mb"] / 1024),
                 "%.1f" % peer_rss if peer_rss else "-"])
    print(rows[-1], flush=True)
  print("DbofModel cluster 8192, hidden 1024, max pool, BN, MoE 2, batch 80%s"
        % (", --bf16" if "--bf16" in extra_flags else ", float32"))
  print(common.table(rows, ["mode", "frames", "ours videos/s", "Model Garden videos/s",
                            "ratio", "ours peak RSS GiB", "Model Garden peak RSS GiB"]))


if __name__ == "__main__":
  tf1.disable_eager_execution()
  main()
