"""train.distribute.strategies and base: how each backend feeds its replicas; how a
multi-worker process leaves its cluster."""

import threading
import types

import numpy as np
import pytest
import tensorflow as tf

from train.distribute import base, strategies


class FakeStrategy:
    """What Backend.distribute_dataset reads of a strategy, recording what it is asked."""

    def __init__(self, *devices, replicas=None):
        self.extended = types.SimpleNamespace(worker_devices=devices)
        self.num_replicas_in_sync = replicas or len(devices)
        self.options = None

    def distribute_datasets_from_function(self, dataset_fn, options):
        self.options = options
        return "distributed"


def test_gpu_replicas_get_batches_prefetched_to_the_device():
    strategy = FakeStrategy("/job:localhost/replica:0/task:0/device:GPU:0")
    backend = strategies.MirroredBackend(strategy=strategy)
    assert backend.distribute_dataset(lambda context: None) == "distributed"
    assert strategy.options.experimental_fetch_to_device is True


def test_several_cpu_replicas_share_a_distributed_dataset_without_device_fetch():
    strategy = FakeStrategy("/device:CPU:0", "/device:CPU:1")
    backend = strategies.MirroredBackend(strategy=strategy)
    assert backend.distribute_dataset(lambda context: None) == "distributed"
    assert strategy.options.experimental_fetch_to_device is False


def test_one_cpu_replica_per_worker_reads_its_worker_shard_directly():
    strategy = FakeStrategy("/job:worker/replica:0/task:1/device:CPU:0", replicas=3)
    backend = strategies.MultiWorkerBackend(strategy=strategy, worker_index=1, num_workers=3)
    seen = []
    result = backend.distribute_dataset(lambda context: seen.append(context) or "dataset")
    assert result == "dataset" and strategy.options is None
    (context,) = seen
    assert (
        context.input_pipeline_id,
        context.num_input_pipelines,
        context.num_replicas_in_sync,
    ) == (1, 3, 3)


def test_mirrored_on_one_cpu_feeds_its_replica_the_whole_stream():
    backend = strategies.MirroredBackend(strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))

    def dataset_fn(context):
        batch = context.get_per_replica_batch_size(4)
        return tf.data.Dataset.range(12).batch(batch)

    got = [
        backend.strategy.experimental_local_results(b)[0].numpy()
        for b in backend.distribute_dataset(dataset_fn)
    ]
    np.testing.assert_array_equal(np.concatenate(got), np.arange(12))
    assert [len(b) for b in got] == [4, 4, 4]


class FakeService:
    """The coordination service's key-value calls, as leave_cluster uses them."""

    def __init__(self, *, answer=True):
        self.answer = answer
        self.gets, self.sets = [], []
        self.never = threading.Event()

    def get_config_key_value(self, key, timeout_in_ms):
        self.gets.append((key, timeout_in_ms))
        if not self.answer:
            raise RuntimeError("DEADLINE_EXCEEDED")
        return "0"

    def set_config_key_value(self, key, value):
        self.sets.append(key)
        if not self.answer:
            self.never.wait()  # task 0 is gone: the call never returns


@pytest.fixture
def cluster_task(monkeypatch):
    def set_task(index, count):
        monkeypatch.setattr(base, "_cluster_task", (index, count))

    return set_task


def test_task_0_leaves_only_after_every_other_task_said_it_leaves(cluster_task):
    cluster_task(0, 3)
    service = FakeService()
    base.leave_cluster(0, service)
    assert [key for key, _ in service.gets] == ["harness-leaving/1", "harness-leaving/2"]
    assert all(0 < ms <= base.LEAVE_TIMEOUT_S * 1000 for _, ms in service.gets)
    assert service.sets == []


def test_task_0_leaves_anyway_when_the_others_do_not_answer(cluster_task):
    cluster_task(0, 3)
    service = FakeService(answer=False)
    base.leave_cluster(0, service)  # no exception: the run's result stands
    assert [key for key, _ in service.gets] == ["harness-leaving/1"]


def test_other_tasks_say_they_leave_and_give_up_if_task_0_is_gone(cluster_task, monkeypatch):
    cluster_task(2, 3)
    service = FakeService()
    base.leave_cluster(0, service)
    assert service.sets == ["harness-leaving/2"] and service.gets == []
    monkeypatch.setattr(base, "LEAVE_NOTICE_TIMEOUT_S", 0.05)
    stuck = FakeService(answer=False)
    base.leave_cluster(0, stuck)  # returns although the call never does
    assert stuck.sets == ["harness-leaving/2"]
    stuck.never.set()


@pytest.mark.parametrize("task, code", [(None, 0), ((0, 2), 1), ((1, 2), 42)])
def test_failed_runs_and_single_process_runs_leave_at_once(monkeypatch, task, code):
    monkeypatch.setattr(base, "_cluster_task", task)
    service = FakeService(answer=False)
    base.leave_cluster(code, service)
    assert service.gets == [] and service.sets == []


def test_multi_worker_processes_keep_their_objects_until_exit(monkeypatch):
    monkeypatch.setattr(base, "_kept_until_exit", [])
    monkeypatch.setattr(base, "_cluster_task", None)
    base.keep_until_exit("iterator")
    assert base._kept_until_exit == []  # one process: objects go as usual
    monkeypatch.setattr(base, "_cluster_task", (1, 2))
    base.keep_until_exit("iterator", "datasets")
    assert base._kept_until_exit == ["iterator", "datasets"]
