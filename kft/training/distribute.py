"""Which `tf.distribute` strategy a run trains under, and what it needs.

kft trains with plain `model.fit`; a strategy only decides where the
variables live and how each global batch is split over the replicas. The
runner creates the model, its optimizer, metrics and every kft layer,
callback and schedule inside `strategy.scope()`, and `fit` splits each
batch of `batch_size` examples (the global batch) evenly over the replicas.

Strategies by name (`kft run --strategy NAME`, or the `strategy` param):
- `"auto"`: a TPU when one is attached, all workers of `TF_CONFIG` when it
  names a cluster of several tasks, all GPUs when there are several, else
  TensorFlow's default strategy (one device).
- `"one_device"`: the first GPU, else the CPU.
- `"mirrored"`: every local GPU (or, without GPUs, every logical CPU).
- `"multi_worker"`: `MultiWorkerMirroredStrategy` over the cluster that
  `TF_CONFIG` describes, with the mends Keras 3's `fit` needs (see
  `mend_keras_for_strategies`).
- `"tpu"`: `TPUStrategy` on the TPU `TPU_NAME` names (or the local TPU VM).

Multi-worker training must create its strategy before TensorFlow's runtime
starts (collective ops are configured at program start), so
`kft.internal.tensorflow_startup` leaves the runtime unstarted when `TF_CONFIG` is set.
"""

import functools
import glob
import json
import os

import keras
import tensorflow as tf

from kft.errors import KftError

STRATEGY_NAMES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")

# Later runs in a process reuse its strategies: collective ops (and a TPU
# connection) are configured once per process, and a second MirroredStrategy
# numbers its collectives like the first, so their all-reduces collide
# ("Shape mismatch in the collective instance").
_CREATED = {}


def strategy_from_name(name):
    """The `tf.distribute.Strategy` called `name`, created once per process.

    Args:
        name: one of `STRATEGY_NAMES`.

    Returns:
        A `tf.distribute.Strategy`.

    Example:
    ```python
    strategy = kft.training.distribute.strategy_from_name("mirrored")
    with strategy.scope():
        model = build_model()
        model.compile(...)
    model.fit(dataset)  # each batch is split over strategy.num_replicas_in_sync
    ```
    """
    name = str(name).lower().replace("-", "_")
    if name not in STRATEGY_NAMES:
        raise KftError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGY_NAMES)}.")
    if name == "auto":
        name = _auto_name()
        if name is None:
            return tf.distribute.get_strategy()
    if name not in _CREATED:
        _CREATED[name] = _create(name)
    return _CREATED[name]


def _create(name):
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        mend_keras_for_strategies()
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        return _multi_worker_strategy()
    return _tpu_strategy()


def is_chief(strategy=None):
    """Whether this process writes results: always, except on the workers of
    a multi-worker cluster other than the chief (the `chief` task, or
    `worker` 0 when the cluster has no `chief`).

    Args:
        strategy: the strategy; `None` means the current one.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not _is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def distribute_dataset(dataset, strategy):
    """Sets how `strategy` shards `dataset` between workers.

    Only multi-worker strategies shard (the replicas of one machine share
    its input pipeline). A policy the dataset sets itself is kept; else see
    `auto_shard_policy`.

    Args:
        dataset: a batched `tf.data.Dataset` of global batches, or `None`.
        strategy: the run's strategy.

    Returns:
        The dataset with its distribution options set.
    """
    if dataset is None or not _is_multi_worker(strategy):
        return dataset
    if dataset.options().experimental_distribute.auto_shard_policy != _AUTO:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = auto_shard_policy(dataset)
    return dataset.with_options(options)


def repeat_for_epochs(dataset, strategy):
    """`(dataset, steps_per_epoch)` for `fit` to read every epoch from one iterator.

    Keras destroys a finished epoch's tf.data iterator and makes a new one;
    the destructor waits for the pipeline's autotuning thread, which was seen
    asleep for 16 to 40 s at an epoch's start (py-spy: the main thread in
    `RootDataset::Iterator::~Iterator`; turning autotuning off removed the
    wait but slowed every step). A repeated dataset with `steps_per_epoch`
    set to one pass keeps one iterator for the whole `fit`; each pass still
    reshuffles (`reshuffle_each_iteration`). Datasets of unknown or infinite
    length, and multi-worker runs (each worker's share differs), are left as
    they are.

    Args:
        dataset: a batched `tf.data.Dataset`, or anything else `fit` takes.
        strategy: the run's strategy.

    Returns:
        The dataset to fit and its `steps_per_epoch` (`None`: let Keras count).
    """
    if not isinstance(dataset, tf.data.Dataset) or _is_multi_worker(strategy):
        return dataset, None
    steps = int(dataset.cardinality())
    if steps <= 0:  # unknown (-2), infinite (-1) or empty
        return dataset, None
    return dataset.repeat(), steps


_AUTO = tf.data.experimental.AutoShardPolicy.AUTO


def auto_shard_policy(dataset):
    """How a multi-worker run shards `dataset`.

    `FILE` when the pipeline reads TFRecord, text-line or fixed-length-record
    files directly (each worker reads its own files); `DATA` for anything
    else (arrays, tensor slices, generators, file lists decoded in a `map`
    or read in an `interleave`, kft's own image pipelines): every worker runs the whole pipeline and
    keeps its share of each global batch, which needs the same order on
    every worker (the same seed; kft seeds every worker alike).

    Args:
        dataset: a `tf.data.Dataset`.

    Returns:
        A `tf.data.experimental.AutoShardPolicy`.
    """
    readers = (tf.data.TFRecordDataset, tf.data.TextLineDataset, tf.data.FixedLengthRecordDataset)
    pending, seen = [dataset], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, readers):
            return tf.data.experimental.AutoShardPolicy.FILE
        pending.extend(node._inputs())
    return tf.data.experimental.AutoShardPolicy.DATA


def _is_multi_worker(strategy):
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def _auto_name():
    if os.environ.get("TPU_NAME") or glob.glob("/dev/accel[0-9]*"):
        return "tpu"
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return None


def _multi_worker_strategy():
    if not os.environ.get("TF_CONFIG"):
        raise KftError(
            "Strategy 'multi_worker' needs TF_CONFIG describing the cluster and this "
            "worker's task; see the README's 'Several machines' section."
        )
    mend_keras_for_strategies()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        if "program startup" not in str(error):
            raise
        raise KftError(
            "Strategy 'multi_worker' must be created before TensorFlow starts running ops: "
            "set TF_CONFIG before `import kft` (kft then leaves the runtime unstarted) and "
            "run nothing on TensorFlow before the run."
        ) from None


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise KftError(
            f"Strategy 'tpu': no TPU found ({error}). Run on a TPU VM or set TPU_NAME."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


# Keras mends. Each is applied only to the Keras versions it was checked on
# and changes behaviour only under a strategy with several replicas.

# keras-team/keras#20585 and the scalar reduction after it: both in Keras
# 3.0's TensorFlow trainer, checked on 3.15. Raise the upper bound after the
# multi-worker test in tests/test_distribute.py passes on a newer Keras.
_MENDED_KERAS = ((3, 0), (3, 15))


def keras_needs_mends(version=None):
    """Whether this Keras is one the multi-worker mends apply to."""
    major_minor = tuple(int(part) for part in (version or keras.__version__).split(".")[:2])
    low, high = _MENDED_KERAS
    return low <= major_minor <= high


@functools.cache
def mend_keras_for_strategies():
    """Lets Keras 3's TensorFlow `fit` train under `MultiWorkerMirroredStrategy`,
    and build a model from batches holding booleans under `MirroredStrategy`.

    Two defects stop it (keras-team/keras#20585):
    1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from one
       batch it obtains with `strategy.reduce("MEAN", batch, axis=None)`;
       under multi-worker collectives that fails ("Attempt to convert a
       value (PerReplica ...) with an unsupported type to a Tensor"), and
       under any strategy it fails on a batch holding booleans (a causal
       LM's `padding_mask`: "Value for attr 'T' of bool" in `AddN`).
       Building needs only shapes and dtypes, so the mend takes this
       worker's first replica's batch under every strategy with replicas
       (`strategy_from_name` applies it for `mirrored` too).
    2. `reduce_per_replica(..., "mean")` reduces every metric with
       `strategy.reduce("MEAN", value, axis=0)`; the metrics are scalars,
       which have no axis 0 ("Invalid reduction dimension 0 for input with
       0 dimensions"). The mend reduces scalars with `axis=None`, under a
       multi-worker strategy only.

    Applied once per process; a Keras outside the checked versions is left
    alone with a warning.
    """
    if not keras_needs_mends():
        import warnings

        warnings.warn(
            f"kft's multi-worker mends for keras-team/keras#20585 were checked on Keras "
            f"{'.'.join(map(str, _MENDED_KERAS[0]))} to {'.'.join(map(str, _MENDED_KERAS[1]))}; "
            f"Keras {keras.__version__} runs unmended.",
            stacklevel=2,
        )
        return False
    from keras.src.backend.tensorflow import trainer as tf_trainer

    stock_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    stock_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or strategy.num_replicas_in_sync == 1:
            return stock_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues) else value,
                next(it),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if not _is_multi_worker(strategy) or reduction not in ("auto", "mean"):
            return stock_reduce(values, strategy, reduction)

        def reduce(value):
            if strategy.experimental_local_results(value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return stock_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    return True
