"""Where training runs: this process's role in a TF_CONFIG cluster, the towers' devices
and where variables live.

Distributed training follows the starter code: TF_CONFIG names a cluster of `ps`,
`master` and/or `worker` tasks and this process's task; parameter servers serve
variables, workers place them there with replica_device_setter and train
asynchronously; the chief (master 0, or worker 0 when there is no master)
initializes, restores the teacher and writes checkpoints and summaries. Without
TF_CONFIG the process is a lone master. Towers: one per visible GPU up to --num_gpu,
else one on the CPU (YT8M_CPU_TOWERS=N: N towers on N logical CPU devices, a testing
aid).
"""

import json
import os

import tensorflow as tf

import cli
import sessions

tf1 = tf.compat.v1
CPU_TOWERS_ENV = "YT8M_CPU_TOWERS"
_VARIABLE_OPS = frozenset(["Variable", "VariableV2", "VarHandleOp", "AutoReloadVariable"])


class Task(object):
  """This process's role in TF_CONFIG (or a lone master when it is not set).

  Attributes: type ("ps", "master", "worker"), index, cluster (a ClusterSpec or None),
  is_chief.
  """

  def __init__(self, environ=None):
    environ = os.environ if environ is None else environ
    try:
      spec = json.loads(environ.get("TF_CONFIG", "{}") or "{}")
    except ValueError as e:
      raise cli.UsageError("TF_CONFIG is not valid JSON: %s" % e)
    task = spec.get("task") or {"type": "master", "index": 0}
    self.type = task.get("type", "master")
    self.index = int(task.get("index", 0))
    cluster = spec.get("cluster")
    self.cluster = tf1.train.ClusterSpec(cluster) if cluster else None
    if self.cluster and self.type not in self.cluster.jobs:
      raise cli.UsageError("TF_CONFIG task type %r is not a job of its cluster %s"
                           % (self.type, self.cluster.jobs))
    has_master = self.cluster is not None and "master" in self.cluster.jobs
    self.is_chief = self.index == 0 and (
        self.type == "master" or (self.type == "worker" and not has_master))

  @property
  def distributed(self):
    return self.cluster is not None

  def start_server(self):
    """Starts this task's tf.train.Server (distributed runs only)."""
    return tf1.train.Server(self.cluster, job_name=self.type, task_index=self.index)

  def device_setter(self):
    """replica_device_setter for a distributed worker (variables on the ps tasks),
    or None."""
    if not self.distributed:
      return None
    return tf1.train.replica_device_setter(
        ps_tasks=len(self.cluster.job_tasks("ps")) if "ps" in self.cluster.jobs else 0,
        worker_device="/job:%s/task:%d" % (self.type, self.index), cluster=self.cluster)

  def restrict_session(self, session_config):
    """Talk only to the parameter servers and ourselves: a worker must not wait for
    other workers (a finished chief would otherwise block a late worker forever)."""
    if self.distributed:
      session_config.device_filters.extend(["/job:ps", "/job:%s/task:%d"
                                            % (self.type, self.index)])


def tower_devices(num_gpu, bf16=False, log_device_placement=False):
  """(device names of the towers, session config) for this machine."""
  cpu_towers = int(os.environ.get(CPU_TOWERS_ENV, "0") or 0)
  session_config = sessions.session_config(bf16,
                                           log_device_placement=log_device_placement)
  if cpu_towers > 0:
    session_config.device_count["CPU"] = cpu_towers
    print("Testing aid %s=%d: %d towers on logical CPU devices."
          % (CPU_TOWERS_ENV, cpu_towers, cpu_towers))
    return ["/cpu:%d" % i for i in range(cpu_towers)], session_config
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    print("No GPU found: training on the CPU with one tower.")
    return ["/cpu:0"], session_config
  count = max(1, min(num_gpu, len(gpus)))
  print("Training with %d GPU towers (of %d visible)." % (count, len(gpus)))
  return ["/gpu:%d" % i for i in range(count)], session_config


def tower_placement(compute_device, devices, distributed):
  """The device (function) a tower's ops go to: its device; variables live with the
  single tower, or on the CPU shared by several (distributed: the setter places them)."""
  if distributed:
    return compute_device
  variable_device = devices[0] if len(devices) == 1 else "/cpu:0"

  def device_fn(op):
    if op.device:
      return op.device
    return variable_device if op.type in _VARIABLE_OPS else compute_device
  return device_fn


class PromptWorkerSessionCreator(tf1.train.WorkerSessionCreator):
  """A worker that looks every second (not every 30 s) whether the chief has
  initialized the variables, so it starts training right after the chief."""

  def _get_session_manager(self):
    if not self._session_manager:
      self._session_manager = tf1.train.SessionManager(
          local_init_op=self._scaffold.local_init_op,
          local_init_feed_dict=self._scaffold.local_init_feed_dict,
          ready_op=self._scaffold.ready_op,
          ready_for_local_init_op=self._scaffold.ready_for_local_init_op,
          graph=tf1.get_default_graph(), recovery_wait_secs=1)
    return self._session_manager
