"""The named KD loss options: --kd_shares parsed, and the options that only mean
something together (kd_model builds the terms, losses computes them)."""

import cli


def shares(text):
  """(L_CE, L_pred, L_rep) shares of --kd_shares text: floats >= 0 summing to 1.

  Raises:
    UsageError naming --kd_shares.
  """
  try:
    values = tuple(float(share) for share in str(text).split(","))
  except ValueError:
    values = ()
  if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
    raise cli.UsageError("--kd_shares=%s: give the shares of L_CE, L_pred and L_rep, "
                         "three numbers >= 0 that sum to 1" % text)
  return values


def check(cfg):
  """Raises UsageError naming the flag when cfg's KD options contradict each other.

  cfg: a config.GraphConfig.
  """
  if not cfg.kd_temperature > 0:
    raise cli.UsageError("--kd_temperature must be positive, got %g"
                         % cfg.kd_temperature)
  if cfg.kd_temperature != 1 and cfg.kd_pred_loss != "logits_kl":
    raise cli.UsageError(
        "--kd_temperature=%g softens logits: it needs --kd_pred_loss=logits_kl (%s "
        "compares probabilities)" % (cfg.kd_temperature, cfg.kd_pred_loss))
  if (cfg.kd_weights == "balanced" and cfg.kd_rep_loss == "none" and
      shares(cfg.kd_shares)[2] > 0):
    raise cli.UsageError("--kd_shares=%s gives L_rep a share but --kd_rep_loss=none "
                         "turns it off: give it share 0" % cfg.kd_shares)
