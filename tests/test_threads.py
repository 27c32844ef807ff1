"""train.threads: the policy, the tuner's choices, and results that never depend on the count."""

import os

import numpy as np
import pytest
import torch

from rnnlab.core.config import ConfigError, from_mapping
from rnnlab.core.errors import RnnlabError
from rnnlab.data.windows import make_window_spec
from rnnlab.nn.models import ModelSpec, build_model
from rnnlab.tools.params import TrainParams
from rnnlab.training.engine import TrainConfig, fit, seed_everything
from rnnlab.training.tasks import JenaTask
from rnnlab.training.threads import FixedThreads, ThreadTuner, available_cores, resolve_threads


@pytest.fixture(autouse=True)
def keep_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def drive(tuner, cost, steps):
    """Feed the tuner ``steps`` step times from ``cost[thread count]``."""
    for _ in range(steps):
        tuner.step(cost[torch.get_num_threads()])


def test_tuner_moves_to_one_thread_when_one_is_faster_and_keeps_checking():
    tuner = ThreadTuner(2, period=10, trial=3, first_trial=5)
    drive(tuner, {1: 0.030, 2: 0.060}, 200)         # a busy machine: 2 threads twice as slow
    assert tuner.current == 1
    assert tuner.used[:5] == [2] * 5                  # starts at the most threads
    late = tuner.used[100:]
    assert late.count(1) > 0.7 * len(late)            # mostly one thread...
    assert 2 in late                                  # ...but it keeps trying two


def test_tuner_counts_the_slow_steps_a_busy_core_gives_two_threads():
    """Beside busy processes two threads run most steps fast and some much slower: their
    mean is what training pays, and the tuner moves to one steady thread on it."""
    tuner = ThreadTuner(2, period=10, trial=3, first_trial=5)
    twos = iter([0.010, 0.010, 0.070] * 200)        # median 10 ms, mean 30 ms
    for _ in range(200):
        tuner.step(0.020 if torch.get_num_threads() == 1 else next(twos))
    assert tuner.current == 1


def test_tuner_stays_with_two_threads_when_they_are_faster():
    tuner = ThreadTuner(2, period=30, trial=3, first_trial=5)
    drive(tuner, {1: 0.040, 2: 0.025}, 300)
    assert tuner.current == 2
    assert tuner.used.count(2) > 0.85 * len(tuner.used)   # trials: 4 steps in 34


def test_tuner_ignores_a_difference_within_its_margin():
    tuner = ThreadTuner(2, period=10, trial=3, first_trial=5, margin=0.08)
    drive(tuner, {1: 0.0290, 2: 0.0300}, 100)       # 1 thread only 3 % faster: noise
    assert tuner.current == 2


def test_tuner_walks_through_neighbours_on_more_cores():
    tuner = ThreadTuner(4, period=6, trial=2, first_trial=3)
    drive(tuner, {1: 0.05, 2: 0.02, 3: 0.03, 4: 0.04}, 300)
    assert tuner.current == 2


def test_policy_from_setting_environment_and_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fixed = resolve_threads(3)
    assert (fixed.threads, fixed.tuned) == (3, False)
    auto = resolve_threads("auto")
    assert auto.threads == available_cores() and auto.tuned == (available_cores() > 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")      # what queue workers are given
    worker = resolve_threads("auto")
    assert (worker.threads, worker.tuned, worker.source) == (1, False, "OMP_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(RnnlabError, match="OMP_NUM_THREADS='two'"):
        resolve_threads("auto")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_auto_counts_only_the_cores_the_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})
        policy = resolve_threads("auto")
        assert (policy.threads, policy.tuned) == (1, False)
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize("value, message", [(0, "from 1 to 1024, got 0"),
                                            ("many", "auto or a number"),
                                            (-2, "from 1 to 1024, got -2")])
def test_threads_param_is_checked(value, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(TrainParams, {"steps_per_epoch": 5, "threads": value},
                     where="params.yaml: train").validate("params.yaml: train")


def test_a_run_that_changes_its_thread_count_gives_the_same_figures():
    """Jena's shape (batch 128, 200 steps), so two threads really split the work, and a
    tuner forced to switch at every trial: the same history as one thread throughout."""
    n = 5000
    rng = np.random.default_rng(1)
    features = rng.normal(0, 1, (n, 14)).astype(np.float32)
    spec = make_window_spec(n_rows=n, lookback=600, step=3, delay=6, target_index=1,
                            splits={"train": (0, 2500), "val": (2501, 3600), "test": (3601, None)})
    task = JenaTask(features, spec, batch_size=128, target_std=1.0)
    config = TrainConfig(epochs=2, steps_per_epoch=6, seed=5, max_eval_batches=2)
    results = []
    for make in (lambda: FixedThreads(1),
                 lambda: ThreadTuner(2, period=1, trial=1, first_trial=1, margin=-1.0)):
        control = make()          # each sets torch's count as it is made: one at a time
        seed_everything(3)
        model = build_model(ModelSpec(dataset="jena", arch="gru", epochs=2, dropout=0.2,
                                      recurrent_dropout=0.2), 14, 200)
        results.append((fit(model, task, config, torch.device("cpu"), progress=False,
                            threads=control), control))
    (one, _), (switching, tuner) = results
    assert set(tuner.used) == {1, 2}
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "threads")}
             for row in one.history]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "threads")}
                     for row in switching.history]
    assert one.val == switching.val and one.test == switching.test
    assert [row["threads"] for row in one.history] == [1.0, 1.0]
    assert 1.0 < switching.history[0]["threads"] < 2.0


@pytest.mark.hostile
@pytest.mark.parametrize("env, message", [
    ("1099511627776", "OMP_NUM_THREADS='1099511627776' is not a number of threads from 1 to "
                      "1024; unset it or set it to the number of threads to use"),
    ("9" * 5000, "OMP_NUM_THREADS='99999999999999999999...' is not a number of threads from 1 "
                 "to 1024"),
    ("0", "OMP_NUM_THREADS='0' is not a number of threads from 1 to 1024"),
], ids=["2**40", "5000 digits", "0"])
def test_a_thread_count_past_what_torch_takes_is_one_line(monkeypatch, env, message):
    """OMP_NUM_THREADS (a queue worker's) of 2**40 reached torch.set_num_threads: a
    traceback ("Overflow when unpacking long") once training had started."""
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    with pytest.raises(RnnlabError) as caught:
        resolve_threads("auto")
    assert str(caught.value).startswith(message)
