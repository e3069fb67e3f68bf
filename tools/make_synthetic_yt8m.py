"""Writes synthetic YouTube-8M (2018) shards: frame-level SequenceExamples and video-level
Examples in the exact on-disk layout of the real data set, from a generative model that
imitates its structure.

Layout (what the readers see; identical to YouTube-8M 2018):
  <output_dir>/frame/train0000.tfrecord ...  tf.train.SequenceExample per video:
      context  `id` (bytes), `labels` (int64 list, sorted class indices); with
               --segments_per_video also the 2019 release's ratings
               `segment_labels`, `segment_start_times` (int64) and `segment_scores`
               (float, 1.0 or 0.0): segment = 5 frames from its start time
      features `rgb` (one bytes feature per frame, 1024 uint8), `audio` (128 uint8)
  <output_dir>/video/train0000.tfrecord ...  tf.train.Example per video:
      `id`, `labels`, `mean_rgb` (1024 floats), `mean_audio` (128 floats) = the mean over the
      video's frames of the dequantized frame features (utils.Dequantize).
  <output_dir>/dataset_info.json              the generator settings and per-split counts.
Frame features are quantized with utils.Quantize: q = round((clip(x,-2,2)+2)*255/4).
Video ids are 4 characters of [0-9A-Za-z] like the real ones ("XwFj"), unique across the
train/validate/test splits of one seed.

The generative model (each knob named in `backquotes` is a flag / keyword argument):
* Classes and labels. The `num_classes` classes are split into `num_verticals` top-level
  verticals of uneven size (like Games, Autos & Vehicles, Arts & Entertainment, ...). Class
  c has popularity (c+1)**-`class_zipf`, so class ids are ordered by frequency as in the real
  vocabulary, and class v < num_verticals is the top-level class of vertical v ("Game",
  "Vehicle", ...). A video picks one vertical (probability = summed popularity of its
  classes), then 1 + Poisson(`labels_per_video` - 1) labels: the vertical's top-level class
  with probability 0.6, the others from the vertical's classes by popularity, each one from
  another vertical with probability 0.1 (cross-vertical co-occurrence, e.g. music in a game
  video). With 3862 classes and few videos most classes never occur (long tail); for small
  demo sets a smaller `num_classes` (e.g. 400) keeps most labels learnable, and the labels
  stay valid for a 3862-class model.
* Features. A `latent_dim`-dimensional semantic space is mapped to rgb (1024) and audio (128)
  by fixed random linear maps drawn from the seed, plus independent per-value noise
  (`feature_noise`; uniform, sensor/quantization-like). Each vertical has a center
  ~ N(0, I), each class a prototype = its vertical's center + `class_offset_scale` * N(0, I):
  classes of one vertical are similar (cosine ~0.6 at the default) but distinguishable, which
  gives a teacher's soft targets something to say. 32 "generic" prototypes (talking heads,
  title cards, ...) are shared by all verticals. The maps are scaled so each value has a
  standard deviation of about `feature_scale` (0.55): quantized values use most of the 256
  buckets (1st-99th percentile about 45..210) and well under 0.1% are clipped.
* Time structure. A video (one frame per second) is a sequence of scenes with log-normal
  lengths of mean `mean_scene_seconds`. A scene is on-topic with probability
  `evidence_fraction`, otherwise background (the vertical's context, i.e. its center, or a
  generic prototype). Each label of a video has an on-screen rate ~ Beta(0.8, 0.8): an
  on-topic scene shows each label with that probability (at least one; a scene showing
  several blends their prototypes), so some labels fill most of the video and others appear
  in one or two scenes. Every label of a video longer than 5 frames is shown in at least one
  scene: a model that sees all frames can find it, one that sees 6 frames often misses it
  (at the defaults 6 uniform frames show ~75% of the labels, all frames ~98%). A scene's
  latent is its prototype + a per-video style offset (`video_style`) + a per-scene
  deviation (`scene_noise`); every frame adds AR(1) noise (`frame_noise`, correlation
  `frame_corr` from one second to the next), so consecutive frames are strongly correlated
  (cosine ~0.85) like real frames 1 s apart.
* Audio carries weaker and partly different evidence: its latent is
  `audio_evidence` * (scene latent) + sqrt(1 - audio_evidence**2) * (independent per-scene
  sound), with 1.5x the feature noise.
* Lengths: regular videos last uniform(`min_frames`, 5/3 * `max_frames`) seconds, capped at
  max_frames (YouTube-8M: 120-500 s capped at 300 frames, so about half have 300 frames); a
  fraction `short_video_fraction` has only 1-5 frames.
tools/check_synthetic_difficulty.py measures the result: a ridge classifier on the mean of
all frames clearly beats the same on the mean of 6 uniformly spread frames, and neither is
near perfect (2000 train / 500 validate videos, --num_classes=400: GAP 0.58 vs 0.49, Hit@1
0.85 vs 0.76; 3862 classes: GAP 0.34 vs 0.29; details in that script's docstring).
Speed: ~130 videos/s for both layouts (3000 videos, 750k frames, in ~23 s on 2 cores).
The test split, when asked for, carries labels like the others (the real one has none).

Output is deterministic for a given seed and flags (byte-identical files on one machine):
video i of a split is drawn from its own random stream, so it does not depend on the number
of videos or shards. Shards are written under a temporary name and renamed when complete;
shards of the written splits left over from an earlier run with more shards are deleted.

Usage:
  python tools/make_synthetic_yt8m.py --output_dir=/tmp/yt8m --train_videos=2000 \\
      --validate_videos=500 --shards=4
  # importable: write_dataset(...), write_frame_records(path, videos),
  #             write_video_records(path, videos), SyntheticYT8M(...).video(split, index)
"""

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time

import numpy as np

if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __package__ in (None, ""):  # run as a script: make the repo root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils  # noqa: E402

SPLIT_CODES = {"train": 0, "validate": 1, "test": 2}
MAX_VIDEOS_PER_SPLIT = 4000000  # 3 splits * 4M < 62**4 four-character ids
ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LENGTH = 4
NUM_GENERIC_PROTOTYPES = 32
TOP_LEVEL_PROB = 0.6
CROSS_VERTICAL_PROB = 0.1
PRESENCE_BETA = (0.8, 0.8)
SCENE_LENGTH_SIGMA = 0.8
SHORT_VIDEO_MAX_FRAMES = 5
SEGMENT_FRAMES = 5  # a 2019 rated segment: 5 frames (seconds) from its start time
DEFAULT_MIN_FRAMES = 120
RGB_SIZE = 1024
AUDIO_SIZE = 128

# Generator knobs and their defaults (CLI flags of the same names).
DEFAULTS = dict(
    num_classes=3862,
    num_verticals=24,
    latent_dim=256,
    labels_per_video=3.0,
    class_zipf=1.0,
    min_frames=None,  # None: min(120, max_frames)
    max_frames=300,
    short_video_fraction=0.03,
    mean_scene_seconds=8.0,
    evidence_fraction=0.5,
    class_offset_scale=0.8,
    scene_noise=0.6,
    frame_noise=0.25,
    frame_corr=0.9,
    feature_noise=0.15,
    feature_scale=0.55,
    audio_evidence=0.5,
    video_style=0.15,
)


def validate_config(cfg):
  """Checks generator knobs (filling in min_frames when None).

  Raises:
    ValueError with a one-line message naming the flag.
  """
  def need(cond, msg):
    if not cond:
      raise ValueError(msg)
  unknown = sorted(set(cfg) - set(DEFAULTS))
  need(not unknown, "unknown generator setting(s): %s" % ", ".join(unknown))
  need(cfg["num_classes"] >= 1, "--num_classes must be >= 1, got %r" % cfg["num_classes"])
  need(1 <= cfg["num_verticals"] <= cfg["num_classes"],
       "--num_verticals must be between 1 and --num_classes (%d), got %r"
       % (cfg["num_classes"], cfg["num_verticals"]))
  need(cfg["latent_dim"] >= 1, "--latent_dim must be >= 1, got %r" % cfg["latent_dim"])
  need(cfg["labels_per_video"] >= 1, "--labels_per_video (mean) must be >= 1, got %r"
       % cfg["labels_per_video"])
  need(cfg["class_zipf"] >= 0, "--class_zipf must be >= 0, got %r" % cfg["class_zipf"])
  need(cfg["max_frames"] >= 1, "--max_frames must be >= 1, got %r" % cfg["max_frames"])
  if cfg["min_frames"] is None:
    cfg["min_frames"] = min(DEFAULT_MIN_FRAMES, cfg["max_frames"])
  need(1 <= cfg["min_frames"] <= cfg["max_frames"],
       "--min_frames must be between 1 and --max_frames (%d), got %r"
       % (cfg["max_frames"], cfg["min_frames"]))
  for name in ("short_video_fraction", "evidence_fraction", "audio_evidence"):
    need(0 <= cfg[name] <= 1, "--%s must be in [0, 1], got %r" % (name, cfg[name]))
  need(0 <= cfg["frame_corr"] < 1, "--frame_corr must be in [0, 1), got %r"
       % cfg["frame_corr"])
  need(cfg["mean_scene_seconds"] > 0, "--mean_scene_seconds must be > 0, got %r"
       % cfg["mean_scene_seconds"])
  for name in ("class_offset_scale", "scene_noise", "frame_noise", "feature_noise",
               "video_style"):
    need(cfg[name] >= 0, "--%s must be >= 0, got %r" % (name, cfg[name]))
  need(cfg["feature_scale"] > 0, "--feature_scale must be > 0, got %r"
       % cfg["feature_scale"])
  for name, value in cfg.items():
    need(not (isinstance(value, float) and not math.isfinite(value)),
         "--%s must be finite, got %r" % (name, value))


_BLAS_FUNCS = []


def _openblas_thread_functions():
  """(get, set) ctypes functions of numpy's bundled OpenBLAS, or None (looked up once)."""
  if not _BLAS_FUNCS:
    try:
      _BLAS_FUNCS.append(_find_openblas_thread_functions())
    except Exception:  # pylint: disable=broad-except
      _BLAS_FUNCS.append(None)
  return _BLAS_FUNCS[0]


def _find_openblas_thread_functions():
  import ctypes
  import glob
  base = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
  for libdir in ("numpy.libs", os.path.join("numpy", ".dylibs")):
    for path in sorted(glob.glob(os.path.join(base, libdir, "*openblas*"))):
      try:
        lib = ctypes.CDLL(path)
      except OSError:
        continue
      for suffix in ("64_", "_64_", ""):
        for prefix in ("scipy_openblas", "openblas"):
          get = getattr(lib, "%s_get_num_threads%s" % (prefix, suffix), None)
          set_ = getattr(lib, "%s_set_num_threads%s" % (prefix, suffix), None)
          if get is not None and set_ is not None:
            return get, set_
  return None


@contextlib.contextmanager
def single_threaded_blas():
  """Runs numpy's OpenBLAS on one thread inside the block (the old count is restored).

  The per-video matrices are small: on this 2-core machine, when the other core is busy,
  two OpenBLAS threads wait more than they compute (measured 4x slower). Does nothing when
  the library is not found.
  """
  funcs = _openblas_thread_functions()
  if funcs is None:
    yield
    return
  get, set_ = funcs
  old = int(get())
  set_(1)
  try:
    yield
  finally:
    set_(old)


def _uniform_noise(rng, shape, std):
  """float32 noise of the given std, uniform (4x cheaper to draw than normal noise)."""
  noise = rng.random(shape, dtype=np.float32)
  noise -= 0.5
  noise *= np.float32(std * math.sqrt(12.0))
  return noise


class SyntheticYT8M(object):
  """The fixed part of the generative model (classes, verticals, prototypes, maps).

  Everything is drawn from `seed`; `video(split, index)` draws one video from its own
  random stream (seed, split, index), so videos do not depend on how many are generated.
  """

  def __init__(self, seed=0, **knobs):
    cfg = dict(DEFAULTS)
    cfg.update(knobs)
    validate_config(cfg)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError("--seed must be a non-negative integer, got %r" % (seed,))
    self.seed = int(seed)
    self.cfg = cfg
    c = cfg["num_classes"]
    v = cfg["num_verticals"]
    d = cfg["latent_dim"]
    rng = np.random.default_rng([self.seed, 99, 7])

    # Classes -> verticals. Class v < V is vertical v's top-level class; the others join
    # vertical u with probability ~ (u+1)^-0.8 (uneven vertical sizes).
    size_weight = (np.arange(v) + 1.0) ** -0.8
    vertical = np.empty(c, np.int64)
    vertical[:v] = np.arange(v)
    vertical[v:] = rng.choice(v, size=c - v, p=size_weight / size_weight.sum())
    self.vertical_of_class = vertical
    self.popularity = (np.arange(c) + 1.0) ** -cfg["class_zipf"]
    vertical_popularity = np.bincount(vertical, weights=self.popularity, minlength=v)
    self.vertical_prob = vertical_popularity / vertical_popularity.sum()
    self.members = []  # per vertical: (non-top classes, their sampling probabilities)
    for u in range(v):
      idx = np.flatnonzero(vertical == u)
      idx = idx[idx != u]
      p = self.popularity[idx]
      self.members.append((idx, p / p.sum() if len(idx) else p))

    # Latent geometry.
    self.centers = rng.standard_normal((v, d))
    offsets = cfg["class_offset_scale"] * rng.standard_normal((c, d))
    self.prototypes = self.centers[vertical] + offsets
    self.generic = rng.standard_normal((NUM_GENERIC_PROTOTYPES, d))
    self.latent_var = (1.0 + cfg["class_offset_scale"] ** 2 + cfg["video_style"] ** 2 +
                       cfg["scene_noise"] ** 2 + cfg["frame_noise"] ** 2)
    map_scale = cfg["feature_scale"] / math.sqrt(d * self.latent_var)
    self.w_rgb = (map_scale * rng.standard_normal((d, RGB_SIZE))).astype(np.float32)
    self.b_rgb = (0.1 * rng.standard_normal(RGB_SIZE)).astype(np.float32)
    self.w_audio = (map_scale * rng.standard_normal((d, AUDIO_SIZE))).astype(np.float32)
    self.b_audio = (0.1 * rng.standard_normal(AUDIO_SIZE)).astype(np.float32)

    # Video ids: an affine permutation of 62**4, so ids look random but never repeat.
    space = len(ID_ALPHABET) ** ID_LENGTH
    a = int(rng.integers(1, space))
    while math.gcd(a, space) != 1:
      a += 1
    self._id_perm = (a, int(rng.integers(0, space)), space)

  def video_id(self, split, index):
    """The 4-character id of video `index` of `split` (unique across splits)."""
    if split not in SPLIT_CODES:
      raise ValueError("unknown split %r (use %s)" % (split, ", ".join(SPLIT_CODES)))
    if not 0 <= index < MAX_VIDEOS_PER_SPLIT:
      raise ValueError("video index %d out of range [0, %d)" % (index, MAX_VIDEOS_PER_SPLIT))
    a, b, space = self._id_perm
    n = (a * (SPLIT_CODES[split] * MAX_VIDEOS_PER_SPLIT + index) + b) % space
    chars = []
    for _ in range(ID_LENGTH):
      n, r = divmod(n, len(ID_ALPHABET))
      chars.append(ID_ALPHABET[r])
    return "".join(reversed(chars))

  def _num_frames(self, rng):
    cfg = self.cfg
    if rng.random() < cfg["short_video_fraction"]:
      return int(rng.integers(1, min(SHORT_VIDEO_MAX_FRAMES, cfg["max_frames"]) + 1))
    upper = max(cfg["max_frames"], int(round(cfg["max_frames"] * 5 / 3)))
    return min(int(rng.integers(cfg["min_frames"], upper + 1)), cfg["max_frames"])

  def _labels(self, rng, vertical):
    cfg = self.cfg
    n = 1 + int(rng.poisson(cfg["labels_per_video"] - 1.0))
    labels = []
    if rng.random() < TOP_LEVEL_PROB:
      labels.append(vertical)
    rest = n - len(labels)
    n_cross = int(rng.binomial(rest, CROSS_VERTICAL_PROB)) if rest else 0
    idx, p = self.members[vertical]
    n_own = min(rest - n_cross, len(idx))
    if n_own:
      labels.extend(rng.choice(idx, size=n_own, replace=False, p=p).tolist())
    if n_cross:
      p_other = np.where(self.vertical_of_class == vertical, 0.0, self.popularity)
      available = int(np.count_nonzero(p_other))
      if available:
        labels.extend(rng.choice(len(p_other), size=min(n_cross, available), replace=False,
                                 p=p_other / p_other.sum()).tolist())
    if not labels:
      labels.append(vertical)
    return sorted(int(x) for x in labels)

  def _scene_lengths(self, rng, n):
    mean = self.cfg["mean_scene_seconds"]
    mu = math.log(mean) - SCENE_LENGTH_SIGMA ** 2 / 2
    lengths = np.zeros(0, np.int64)
    while lengths.sum() < n:
      more = rng.lognormal(mu, SCENE_LENGTH_SIGMA, size=int(n / mean) + 4)
      lengths = np.concatenate([lengths, np.maximum(1, np.round(more)).astype(np.int64)])
    k = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    lengths = lengths[:k].copy()
    lengths[-1] -= lengths.sum() - n
    return lengths

  def _ar1(self, rng, n, d):
    """[n, d] AR(1) noise with unit variance and correlation frame_corr between rows."""
    rho = self.cfg["frame_corr"]
    e = rng.standard_normal((n, d))
    e[1:] *= math.sqrt(1.0 - rho * rho)
    for t in range(1, n):
      e[t] += rho * e[t - 1]
    return e

  def video(self, split, index):
    """Draws video `index` of `split`.

    Returns:
      dict with `id` (str), `labels` (sorted list of int), `rgb` (uint8 [n, 1024]),
      `audio` (uint8 [n, 128]) and, for analysis, `vertical` (int) and `shown` (bool
      [n, len(labels)]: which labels each frame shows).
    """
    with single_threaded_blas():
      return self._video(split, index)

  def _video(self, split, index):
    cfg = self.cfg
    vid = self.video_id(split, index)
    rng = np.random.default_rng([self.seed, 1 + SPLIT_CODES[split], index])
    n = self._num_frames(rng)
    vertical = int(rng.choice(len(self.vertical_prob), p=self.vertical_prob))
    labels = self._labels(rng, vertical)
    num_labels = len(labels)
    # How often each label is on screen: Beta-distributed, so some labels fill most
    # on-topic scenes and others appear in one or two.
    presence = rng.beta(PRESENCE_BETA[0], PRESENCE_BETA[1], size=num_labels)

    # Scenes: on-topic ones show one or more labels (shown[s, j]), the others are
    # background (the vertical's context, or a generic prototype).
    lengths = self._scene_lengths(rng, n)
    k = len(lengths)
    on_topic = rng.random(k) < cfg["evidence_fraction"]
    shown = (rng.random((k, num_labels)) < presence) & on_topic[:, None]
    pick = rng.choice(num_labels, size=k, p=(presence + 1e-6) / (presence + 1e-6).sum())
    empty = on_topic & ~shown.any(1)
    shown[empty, pick[empty]] = True
    if n > SHORT_VIDEO_MAX_FRAMES:  # every label is on screen at least once
      for j in np.flatnonzero(~shown.any(0)):
        s = int(rng.integers(k))
        shown[s, j] = True
        on_topic[s] = True
    context = rng.random(k) < 0.5
    generic = rng.integers(NUM_GENERIC_PROTOTYPES, size=k)
    protos = self.prototypes[labels]
    count = np.maximum(shown.sum(1, keepdims=True), 1)
    background = np.where(context[:, None], self.centers[vertical], self.generic[generic])
    base = np.where(on_topic[:, None], (shown @ protos) / count, background)
    d = cfg["latent_dim"]
    style = cfg["video_style"] * rng.standard_normal(d)
    scene = base + style + cfg["scene_noise"] * rng.standard_normal((k, d))
    a = cfg["audio_evidence"]
    sound_std = math.sqrt((1 - a * a) * (self.latent_var - cfg["frame_noise"] ** 2))
    scene_audio = a * scene + sound_std * rng.standard_normal((k, d))
    of_frame = np.repeat(np.arange(k), lengths)
    wiggle = cfg["frame_noise"] * self._ar1(rng, n, 2 * d)
    z_rgb = scene[of_frame] + wiggle[:, :d]
    z_audio = scene_audio[of_frame] + wiggle[:, d:]

    rgb = z_rgb.astype(np.float32) @ self.w_rgb + self.b_rgb
    rgb += _uniform_noise(rng, (n, RGB_SIZE), cfg["feature_noise"])
    audio = z_audio.astype(np.float32) @ self.w_audio + self.b_audio
    audio += _uniform_noise(rng, (n, AUDIO_SIZE), 1.5 * cfg["feature_noise"])
    return {"id": vid, "labels": labels, "rgb": utils.Quantize(rgb),
            "audio": utils.Quantize(audio), "vertical": vertical,
            "shown": shown[of_frame]}

  def videos(self, split, count, start=0):
    """Yields videos start .. start+count-1 of `split` (see `video`)."""
    for i in range(start, start + count):
      yield self.video(split, i)

  def rated_segments(self, split, index, video, count):
    """2019-style ratings of up to `count` segments of a video dict from `video`.

    Each rated segment is SEGMENT_FRAMES frames from a start time that is a multiple of
    SEGMENT_FRAMES (distinct, the segment inside the video), rated for one of the
    video's labels: 1.0 where a frame of the segment shows that label, else 0.0. Drawn
    from a stream of their own, so the video itself does not change.

    Returns:
      (segment_labels, segment_start_times, segment_scores): lists sorted by start.
    """
    rng = np.random.default_rng([self.seed, 11, SPLIT_CODES[split], index])
    starts = np.arange(len(video["rgb"]) // SEGMENT_FRAMES) * SEGMENT_FRAMES
    if not len(starts) or not count:
      return [], [], []
    chosen = np.sort(rng.choice(starts, size=min(count, len(starts)), replace=False))
    which = rng.integers(len(video["labels"]), size=len(chosen))
    scores = [float(video["shown"][start:start + SEGMENT_FRAMES, j].any())
              for start, j in zip(chosen, which)]
    return ([int(video["labels"][j]) for j in which], [int(t) for t in chosen], scores)


# ---------------------------------------------------------------------------------------
# Low-level writers (also used by tests to hand-craft exact records).

def _frame_features(video):
  """The {name: uint8 [n, size]} frame features of a video dict."""
  if "features" in video:
    feats = video["features"]
  else:
    feats = {k: v for k, v in video.items()
             if k not in ("id", "labels", "vertical", "shown", "segment_labels",
                          "segment_start_times", "segment_scores")}
  out = {}
  for name, arr in feats.items():
    arr = np.asarray(arr)
    if arr.ndim != 2:
      raise ValueError("video %r: feature %r must be a [frames, size] array, got shape %s"
                       % (video.get("id"), name, arr.shape))
    if arr.dtype != np.uint8:
      if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0
                       or arr.max() > 255):
        raise ValueError("video %r: feature %r must hold uint8 values (0..255)"
                         % (video.get("id"), name))
      arr = arr.astype(np.uint8)
    out[name] = arr
  return out


def _encode_id(video_id):
  return video_id.encode("utf-8") if isinstance(video_id, str) else bytes(video_id)


def frame_record(video):
  """Serialized tf.train.SequenceExample of one video dict (see write_frame_records)."""
  import tensorflow as tf
  ex = tf.train.SequenceExample()
  ctx = ex.context.feature
  ctx["id"].bytes_list.value.append(_encode_id(video["id"]))
  ctx["labels"].int64_list.value.extend(int(x) for x in video["labels"])
  if "segment_labels" in video:  # the 2019 release's ratings
    ctx["segment_labels"].int64_list.value.extend(video["segment_labels"])
    ctx["segment_start_times"].int64_list.value.extend(video["segment_start_times"])
    ctx["segment_scores"].float_list.value.extend(video["segment_scores"])
  for name, arr in _frame_features(video).items():
    feature_list = ex.feature_lists.feature_list[name]
    for row in arr:
      feature_list.feature.add().bytes_list.value.append(row.tobytes())
  return ex.SerializeToString(deterministic=True)


def video_level_features(frame_features):
  """{"mean_<name>": float32 [size]}: mean over frames of the dequantized features.

  Args:
    frame_features: {name: uint8 [n, size]} with n >= 1.
  """
  out = {}
  for name, arr in frame_features.items():
    if len(arr) == 0:
      raise ValueError("feature %r has no frames: its mean is undefined" % name)
    # Dequantize is affine, so the mean of dequantized frames = Dequantize(mean of q).
    out["mean_" + name] = utils.Dequantize(
        np.asarray(arr).mean(axis=0, dtype=np.float64)).astype(np.float32)
  return out


def video_record(video):
  """Serialized tf.train.Example of one video dict (see write_video_records)."""
  import tensorflow as tf
  means = {k: v for k, v in video.items() if k.startswith("mean_")}
  if not means:
    means = video_level_features(_frame_features(video))
  ex = tf.train.Example()
  feat = ex.features.feature
  feat["id"].bytes_list.value.append(_encode_id(video["id"]))
  feat["labels"].int64_list.value.extend(int(x) for x in video["labels"])
  for name, values in means.items():
    feat[name].float_list.value.extend(np.asarray(values, np.float32).ravel().tolist())
  return ex.SerializeToString(deterministic=True)


class _RecordFile(object):
  """A TFRecord file written under a temporary name and renamed on a clean close."""

  def __init__(self, path):
    import tensorflow as tf
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    self.path = path
    self.tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
    self.writer = tf.io.TFRecordWriter(self.tmp)
    self.count = 0

  def write(self, record):
    self.writer.write(record)
    self.count += 1

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    self.writer.close()
    if exc_type is None:
      os.replace(self.tmp, self.path)
    elif os.path.exists(self.tmp):
      os.remove(self.tmp)
    return False


def _write_records(path, records):
  with _RecordFile(path) as f:
    for record in records:
      f.write(record)
  return f.count


def write_frame_records(path, videos):
  """Writes a frame-level TFRecord file (written to a temp name, then renamed).

  Args:
    path: output file.
    videos: iterable of dicts {"id": str, "labels": list of int, <feature>: uint8
      [frames, size], ...}, e.g. {"rgb": [n, 1024], "audio": [n, 128]}; or with the
      features under a "features" dict {name: uint8 [frames, size]}. Any number of frames
      (0, 1, 301, ...) and any feature names/sizes are written as given.
  Returns:
    the number of records written.
  """
  return _write_records(path, (frame_record(v) for v in videos))


def write_video_records(path, videos):
  """Writes a video-level TFRecord file (tf.train.Example per video).

  Args:
    path: output file.
    videos: iterable of dicts {"id", "labels", "mean_<name>": float [size], ...}; a dict
      without "mean_*" keys is taken as frame-level (as in write_frame_records) and its
      means are computed from the dequantized frames.
  Returns:
    the number of records written.
  """
  return _write_records(path, (video_record(v) for v in videos))


# ---------------------------------------------------------------------------------------
# Whole data sets.

def shard_name(split, index):
  return "%s%04d.tfrecord" % (split, index)


def _remove_stale_shards(directory, split, keep):
  """Deletes `<split>NNNN.tfrecord` files in `directory` whose index is >= keep."""
  if not os.path.isdir(directory):
    return
  pattern = re.compile(r"^%s(\d{4})\.tfrecord$" % re.escape(split))
  for name in sorted(os.listdir(directory)):
    m = pattern.match(name)
    if m and int(m.group(1)) >= keep:
      os.remove(os.path.join(directory, name))


def write_dataset(output_dir, splits=("train", "validate"), train_videos=64,
                  validate_videos=32, test_videos=32, shards=2, video_level=True, seed=0,
                  log=None, workers=1, segments_per_video=0, **knobs):
  """Generates and writes frame-level (and video-level) shards for `splits`.

  Args:
    output_dir: frame-level shards go to <output_dir>/frame, video-level to
      <output_dir>/video.
    splits: names among train, validate, test (labels are written for all of them).
    train_videos, validate_videos, test_videos: videos per split (>= 0).
    shards: shards per split (>= 1); videos are split into contiguous blocks.
    video_level: also write the video-level layout.
    seed: non-negative int.
    log: optional callable(str) for progress lines.
    workers: processes writing shards at once (the shards are the same for any count).
    segments_per_video: rated 5-frame segments per video in the frame-level records'
      context, as the 2019 release has them (SyntheticYT8M.rated_segments); 0: none.
    **knobs: generator settings, see DEFAULTS.
  Returns:
    dict with "output_dir", "frame_dir", "video_dir" (None without video level), "config",
    "seed", "seconds" and "splits": {split: {"videos", "short_videos", "frames",
    "labels", "shards", "frame_files", "video_files"}}.
  Raises:
    ValueError (one-line message naming the setting) for bad arguments.
  """
  if isinstance(splits, str):
    splits = [s.strip() for s in splits.split(",") if s.strip()]
  splits = list(splits)
  if not splits:
    raise ValueError("--splits is empty")
  for s in splits:
    if s not in SPLIT_CODES:
      raise ValueError("--splits: unknown split %r (use train, validate, test)" % s)
  if len(set(splits)) != len(splits):
    raise ValueError("--splits lists a split twice: %s" % ",".join(splits))
  counts = {"train": train_videos, "validate": validate_videos, "test": test_videos}
  for s in splits:
    if not isinstance(counts[s], (int, np.integer)) or not \
        0 <= counts[s] <= MAX_VIDEOS_PER_SPLIT:
      raise ValueError("--%s_videos must be an integer in [0, %d], got %r"
                       % (s, MAX_VIDEOS_PER_SPLIT, counts[s]))
  if not isinstance(shards, (int, np.integer)) or shards < 1 or shards > 9999:
    raise ValueError("--shards must be an integer in [1, 9999], got %r" % (shards,))
  if not isinstance(segments_per_video, (int, np.integer)) or segments_per_video < 0:
    raise ValueError("--segments_per_video must be an integer >= 0, got %r"
                     % (segments_per_video,))
  model = SyntheticYT8M(seed=seed, **knobs)
  with single_threaded_blas():
    return _write_splits(model, output_dir, splits, counts, shards, video_level, log,
                         workers, int(segments_per_video))


def _write_shard(model, segments_per_video, split, lo, hi, frame_path, video_path):
  """Writes videos lo .. hi-1 of `split` to one frame-level shard (and one video-level
  shard when video_path is set), with `segments_per_video` rated segments each; returns
  their (frames, labels, short videos)."""
  frames_total = labels_total = short = 0
  with contextlib.ExitStack() as stack:
    frame_file = stack.enter_context(_RecordFile(frame_path))
    video_file = stack.enter_context(_RecordFile(video_path)) if video_path else None
    for index, video in enumerate(model.videos(split, hi - lo, start=lo), lo):
      frames = len(video["rgb"])
      frames_total += frames
      labels_total += len(video["labels"])
      short += int(frames <= SHORT_VIDEO_MAX_FRAMES)
      feats = {"rgb": video["rgb"], "audio": video["audio"]}
      record = dict(feats, id=video["id"], labels=video["labels"])
      if segments_per_video:
        record.update(zip(("segment_labels", "segment_start_times", "segment_scores"),
                          model.rated_segments(split, index, video, segments_per_video)))
      frame_file.write(frame_record(record))
      if video_file is not None:
        means = video_level_features(feats)
        video_file.write(video_record(dict(means, id=video["id"],
                                           labels=video["labels"])))
  return frames_total, labels_total, short


def _write_shards(model, jobs, workers):
  """_write_shard for every job (segments_per_video, split, lo, hi, frame_path,
  video_path), in `workers`
  forked processes when there are several (each shard is the same whatever the
  process: a video depends on its split, index and the seed alone)."""
  if workers <= 1 or len(jobs) <= 1:
    return [_write_shard(model, *job) for job in jobs]
  import multiprocessing
  import tensorflow  # noqa: F401  (imported once, before the fork: no op has run)
  with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
    return pool.starmap(_write_shard, [(model,) + tuple(job) for job in jobs])


def _write_splits(model, output_dir, splits, counts, shards, video_level, log,
                  workers=1, segments_per_video=0):
  start = time.time()
  frame_dir = os.path.join(output_dir, "frame")
  video_dir = os.path.join(output_dir, "video")
  os.makedirs(frame_dir, exist_ok=True)
  summary = {"output_dir": output_dir, "frame_dir": frame_dir,
             "video_dir": video_dir if video_level else None, "config": dict(model.cfg),
             "seed": model.seed, "segments_per_video": segments_per_video,
             "splits": {}}
  jobs = []
  for split in splits:
    n = int(counts[split])
    for s in range(shards):
      jobs.append((segments_per_video, split, s * n // shards, (s + 1) * n // shards,
                   os.path.join(frame_dir, shard_name(split, s)),
                   os.path.join(video_dir, shard_name(split, s)) if video_level else None))
  written = _write_shards(model, jobs, workers)
  for split in splits:
    n = int(counts[split])
    stats = {"videos": n, "short_videos": 0, "frames": 0, "labels": 0, "shards": shards,
             "frame_files": [], "video_files": []}
    for index, (_, job_split, _, _, frame_path, video_path) in enumerate(jobs):
      if job_split != split:
        continue
      frames, labels, short = written[index]
      stats["frames"] += frames
      stats["labels"] += labels
      stats["short_videos"] += short
      stats["frame_files"].append(frame_path)
      if video_level:
        stats["video_files"].append(video_path)
    _remove_stale_shards(frame_dir, split, shards)
    _remove_stale_shards(video_dir, split, shards if video_level else 0)
    summary["splits"][split] = stats
    if log:
      log("%s: %d videos (%d short), %d shards, %d frames, %.2f labels/video -> %s"
          % (split, n, stats["short_videos"], shards, stats["frames"],
             stats["labels"] / max(n, 1), os.path.join(frame_dir, split + "*.tfrecord")))
  summary["seconds"] = time.time() - start
  _write_info(output_dir, summary)
  return summary


def _write_info(output_dir, summary):
  """Writes dataset_info.json; splits of an earlier run with the same settings are kept."""
  path = os.path.join(output_dir, "dataset_info.json")
  splits = {s: {k: v for k, v in st.items() if not k.endswith("_files")}
            for s, st in summary["splits"].items()}
  for st in splits.values():
    st["video_level"] = summary["video_dir"] is not None
  try:
    with open(path) as f:
      old = json.load(f)
    if old.get("config") == summary["config"] and old.get("seed") == summary["seed"]:
      merged = dict(old.get("splits", {}))
      merged.update(splits)
      splits = merged
  except (OSError, ValueError):
    pass
  tmp = os.path.join(output_dir, ".dataset_info.json.tmp")
  with open(tmp, "w") as f:
    json.dump({"generator": "tools/make_synthetic_yt8m.py", "config": summary["config"],
               "seed": summary["seed"], "splits": splits}, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Command line.

class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (`prog: error: message`, exit 2)."""

  def error(self, message):
    self.exit(2, "%s: error: %s\n" % (self.prog, message))


def build_parser():
  p = _Parser(prog="make_synthetic_yt8m.py",
              description="Write synthetic YouTube-8M 2018 frame- and video-level shards.")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--splits", default="train,validate",
                 help="comma-separated subset of train,validate,test")
  p.add_argument("--train_videos", type=int, default=64)
  p.add_argument("--validate_videos", type=int, default=32)
  p.add_argument("--test_videos", type=int, default=32)
  p.add_argument("--shards", type=int, default=2, help="shards per split")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no_video_level", action="store_true",
                 help="write only the frame-level shards")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="processes writing shards at once (the same shards for any "
                 "count; default: one per CPU)")
  p.add_argument("--segments_per_video", type=int, default=0,
                 help="rated 5-frame segments per video (context segment_labels, "
                 "segment_start_times, segment_scores, as in the 2019 release; "
                 "default 0: none)")
  g = p.add_argument_group("generative model")
  helps = dict(
      num_classes="vocabulary size",
      num_verticals="top-level verticals (classes 0..V-1 are their top-level classes)",
      latent_dim="dimension of the latent semantic space",
      labels_per_video="mean number of labels per video (>= 1)",
      class_zipf="class popularity exponent: class c ~ (c+1)^-class_zipf",
      min_frames="shortest regular video in frames; default min(120, max_frames)",
      max_frames="frames per video at most (YouTube-8M: 300)",
      short_video_fraction="fraction of videos with only 1-5 frames",
      mean_scene_seconds="mean scene length (s, log-normal)",
      evidence_fraction="probability that a scene shows one of the video's labels",
      class_offset_scale="distance of class prototypes from their vertical center",
      scene_noise="per-scene deviation from the prototype (latent units)",
      frame_noise="per-frame AR(1) deviation within a scene (latent units)",
      frame_corr="AR(1) correlation of the frame noise between consecutive frames",
      feature_noise="independent noise per feature value",
      feature_scale="standard deviation of the latent part of each feature value",
      audio_evidence="how much of the scene content audio carries (0..1)",
      video_style="per-video offset shared by all its scenes (latent units)")
  for name, default in DEFAULTS.items():
    g.add_argument("--" + name, type=int if default is None else type(default),
                   default=default, help=helps[name] + (
                       "" if default is None else " (default %s)" % default))
  return p


def main(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)
  knobs = {k: getattr(args, k) for k in DEFAULTS}
  try:
    summary = write_dataset(args.output_dir, splits=args.splits,
                            train_videos=args.train_videos,
                            validate_videos=args.validate_videos,
                            test_videos=args.test_videos, shards=args.shards,
                            video_level=not args.no_video_level, seed=args.seed,
                            log=print, workers=max(1, args.workers),
                            segments_per_video=args.segments_per_video, **knobs)
  except ValueError as e:
    parser.error(str(e))
  total = sum(s["videos"] for s in summary["splits"].values())
  print("wrote %d videos in %.1f s (%.0f videos/s)%s" % (
      total, summary["seconds"], total / max(summary["seconds"], 1e-9),
      "" if args.no_video_level else "; video-level shards in " + summary["video_dir"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
