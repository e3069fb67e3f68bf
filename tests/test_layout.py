"""The code base's shape, held so that later work keeps it: module sizes and layers.

Each top-level module sits in one layer; a module imports only from its own layer or
lower ones, and the imports form no cycle. (README.md's length: tests/test_docs.py.)
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A new module goes in the lowest layer whose modules it needs.
LAYERS = (
    # 0: plain helpers, the starter's metrics, registries
    ("cli", "file_io", "sessions", "summaries", "gradients", "utils",
     "vocabulary", "record_layout", "frame_selection", "preprocessing", "eval_util",
     "segment_ranking", "progress", "registry", "shard_leases",
     "kd_options"),
    # 1: layers and models
    ("model_utils", "losses", "video_level_models", "nextvlad", "frame_level_models"),
    # 2: records -> batches
    ("record_checks", "record_parsing", "segment_parsing", "input_pipeline",
     "corrupt_records", "readers"),
    # 3: a graph's description
    ("graph_flags", "config"),
    # 4: run directories, roles and where they run
    ("run_dir", "kd_model", "cluster"),
    # 5: graphs and what a run needs before its graph
    ("inference_graph", "teacher_cache", "train_graph", "training_run",
     "tflite_export", "tflite_model"),
    # 6: the entry points
    ("train", "eval", "inference", "export_model"),
)
SIZE_LIMITS = {"readers": 450, "utils": 450, "config": 450, "train": 450}
DEFAULT_LIMIT = 500
EXEMPT = ("eval_util",)  # the starter's metric code


def _top_level_modules():
  return sorted(name[:-3] for name in os.listdir(ROOT)
                if name.endswith(".py") and name != "setup.py")


def _imports(module):
  """The project's top-level modules `module` imports (anywhere in its source)."""
  with open(os.path.join(ROOT, module + ".py")) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.add(node.module.split(".")[0])
  return found & set(_top_level_modules()) - {module}


def _layer_of():
  return {module: i for i, layer in enumerate(LAYERS) for module in layer}


def test_every_module_has_a_layer():
  layer_of = _layer_of()
  assert [m for m in _top_level_modules() if m not in layer_of] == []


def test_no_module_imports_from_a_higher_layer():
  layer_of = _layer_of()
  upward = ["%s (layer %d) imports %s (layer %d)" % (m, layer_of[m], i, layer_of[i])
            for m in _top_level_modules() if m in layer_of
            for i in sorted(_imports(m)) if layer_of.get(i, -1) > layer_of[m]]
  assert upward == []


def test_the_imports_have_no_cycle():
  graph = {m: _imports(m) for m in _top_level_modules()}
  state, cycles = {}, []

  def visit(module, path):
    state[module] = "open"
    for imported in sorted(graph[module]):
      if state.get(imported) == "open":
        cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
      elif imported not in state:
        visit(imported, path + [imported])
    state[module] = "done"

  for module in graph:
    if module not in state:
      visit(module, [module])
  assert cycles == []


def test_config_imports_nothing_above_the_models():
  assert _imports("config") <= set(LAYERS[0] + LAYERS[1] + ("graph_flags",))


def test_module_sizes():
  too_long = []
  for module in _top_level_modules():
    if module in EXEMPT:
      continue
    with open(os.path.join(ROOT, module + ".py")) as f:
      lines = sum(1 for _ in f)
    limit = SIZE_LIMITS.get(module, DEFAULT_LIMIT)
    if lines >= limit:
      too_long.append("%s.py: %d lines (limit %d)" % (module, lines, limit))
  assert too_long == []


def test_the_checks_can_fail(tmp_path):
  """The cycle finder and the layer lookup see what they are meant to."""
  layer_of = _layer_of()
  assert layer_of["config"] > layer_of["frame_level_models"]
  assert "kd_model" in _imports("train") and "config" in _imports("kd_model")
