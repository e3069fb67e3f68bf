"""Adding a model is one registration: its class, its flags and their defaults in one
place (registry.Hyperparameter), and every CLI's config takes it from there."""
import subprocess
import sys
import textwrap

import pytest

import registry
from tests import helpers

MY_MODEL = textwrap.dedent('''
    import tensorflow as tf
    import model_utils
    import registry

    @registry.frame_level_model(
        registry.Hyperparameter("my_hidden_size", "Units of MyModel's hidden layer.",
                                arg="hidden_size", lower_bound=1))
    class MyModel(model_utils.BaseModel):
      def create_model(self, model_input, vocab_size, num_frames, is_training,
                       hidden_size=7, **unused_params):
        mean = model_utils.masked_mean(
            model_input, model_utils.frame_mask(num_frames, tf.shape(model_input)[1]))
        hidden = model_utils.fully_connected(mean, hidden_size, "hidden")
        logits = model_utils.fully_connected(hidden, vocab_size, "logits")
        return {"predictions": tf.sigmoid(logits), "logits": logits,
                "representation": hidden}
''')


def test_a_registered_model_gets_its_flag_its_default_and_its_arguments(tmp_path):
  """In a fresh interpreter (flags are defined when config is imported): a model
  registered before config is a --model choice whose hyperparameter is a flag with the
  keyword's default, recorded in model_flags.json and passed to create_model."""
  (tmp_path / "my_models.py").write_text(MY_MODEL)
  script = textwrap.dedent('''
      import sys
      sys.path[:0] = [%r, %r]
      import tensorflow as tf
      tf.compat.v1.disable_eager_execution()
      import my_models
      import config, kd_model
      default = config.from_flags(config.private_flags(["--model=MyModel"]))
      assert default.my_hidden_size == 7, default.my_hidden_size
      cfg = config.from_flags(config.private_flags(
          ["--model=MyModel", "--my_hidden_size=3", "--num_classes=5", "--pca_eigenvals="]))
      assert cfg.to_json()["my_hidden_size"] == 3
      assert cfg.create_kwargs((1024, 128), "auto")["hidden_size"] == 3
      with tf.Graph().as_default():
        frames = tf.zeros([2, 4, 1152])
        out = kd_model.create_role_model(cfg, "teacher", frames, tf.constant([4, 2]),
                                         is_training=False, reuse=False)
        assert out["representation"].shape.as_list() == [2, 3]
        assert out["predictions"].shape.as_list() == [2, 5]
      try:
        config.private_flags(["--model=MyModel", "--my_hidden_size=0"])
      except Exception as e:
        assert "my_hidden_size" in str(e)
      else:
        raise AssertionError("--my_hidden_size=0 was accepted")
      print("ok")
  ''' % (str(tmp_path), helpers.ROOT))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=120)
  assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_a_hyperparameter_without_a_default_is_refused_at_registration():
  models = registry.Registry("test model", "--model")
  with pytest.raises(TypeError, match="no keyword width"):
    @models.register(registry.Hyperparameter("width", "W."))
    class NoWidth(object):  # pylint: disable=unused-variable
      def create_model(self, model_input, **unused):
        return {}


def test_every_registered_flag_default_is_the_models_keyword_default():
  import inspect
  for cls in registry.FRAME_LEVEL_MODELS.classes() + registry.VIDEO_LEVEL_MODELS.classes():
    signature = inspect.signature(cls.create_model).parameters
    for hyperparameter in cls.hyperparameters:
      if hyperparameter.keyword() in signature:
        assert signature[hyperparameter.keyword()].default == hyperparameter.default, (
            cls.__name__, hyperparameter.flag)
