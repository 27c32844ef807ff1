import gc
import logging
import pickle
import warnings

import numpy as np
import pytest
import torch

from rnnlab.core.errors import RnnlabError
from rnnlab.data.windows import make_window_spec
from rnnlab.nn.models import ModelSpec, build_model
from rnnlab.training.device import resolve_device
from rnnlab.training.engine import (
    TrainConfig,
    TrainingDiverged,
    _StepLosses,
    fit,
    fit_together,
    seed_everything,
    seeds_together,
)
from rnnlab.training.tasks import JenaTask
from rnnlab.training.threads import FixedThreads

N = 1500
SPLITS = {"train": (0, 800), "val": (801, 1150), "test": (1151, None)}


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    t = np.arange(N)
    features = rng.normal(0, 0.3, (N, 14)).astype(np.float32)
    features[:, 1] += np.sin(2 * np.pi * t / 144).astype(np.float32)   # a daily cycle to learn
    spec = make_window_spec(n_rows=N, lookback=60, step=6, delay=12, target_index=1,
                            splits=SPLITS)
    return JenaTask(features, spec, batch_size=32, target_std=2.0)


def make(arch="gru", **kw):
    seed_everything(7)
    return build_model(ModelSpec(dataset="jena", arch=arch, epochs=3, **kw), 14, 10)


def run(task, model, tmp_path=None, epochs=3, on_epoch=None, fingerprint="f", **kw):
    config = TrainConfig(epochs=epochs, steps_per_epoch=6, seed=11, **kw)
    ckpt = tmp_path / "ckpt.pt" if tmp_path else None
    return fit(model, task, config, torch.device("cpu"), checkpoint=ckpt, fingerprint=fingerprint,
               on_epoch=on_epoch, progress=False)


def test_metrics_history_and_best_epoch(task):
    seen = []
    result = run(task, make(), on_epoch=lambda e, row: seen.append((e, row["val_loss"])))
    assert [e for e, _ in seen] == [1, 2, 3] == [r["epoch"] for r in result.history]
    best = min(result.history, key=lambda r: r["val_mae"])
    assert result.best_epoch == best["epoch"]
    assert result.val["mae"] == pytest.approx(best["val_mae"], rel=1e-6)   # best weights restored
    assert result.val["mae_degc"] == pytest.approx(2.0 * result.val["mae"])
    assert set(result.test) == {"loss", "mae", "mae_degc"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("kw", [{}, {"dropout": 0.2, "recurrent_dropout": 0.2}])
def test_same_seed_same_metrics(task, kw):
    a, b = run(task, make(**kw)), run(task, make(**kw))
    assert a.history == [dict(r, seconds=a.history[i]["seconds"]) for i, r in enumerate(b.history)]
    assert a.val == b.val and a.test == b.test


@pytest.mark.hostile
def test_resume_after_a_kill_gives_the_same_result(task, tmp_path):
    kw = {"dropout": 0.2, "recurrent_dropout": 0.3}
    straight = run(task, make(**kw), epochs=4)

    def kill_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt  # the stage killed right after epoch 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        run(task, make(**kw), tmp_path, epochs=4, on_epoch=kill_after_two)
    replayed = []
    resumed = run(task, make(**kw), tmp_path, epochs=4,
                  on_epoch=lambda e, row: replayed.append(e))
    assert resumed.resumed_from == 2
    assert replayed == [1, 2, 3, 4]          # restored epochs are reported again
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    assert resumed.val == straight.val and resumed.test == straight.test
    assert resumed.best_epoch == straight.best_epoch


@pytest.mark.hostile
def test_checkpoint_of_other_params_is_ignored(task, tmp_path):
    run(task, make(), tmp_path, epochs=2, fingerprint="old")
    result = run(task, make(), tmp_path, epochs=2, fingerprint="new")
    assert result.resumed_from == 0


class Planted:
    """Unpickled by plain pickle, this creates ``marker``: code run from a data file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_torch_save(path, marker):
    torch.save({"fingerprint": "f", "epoch": 9, "payload": Planted(marker)}, path)


def plant_raw_pickle(path, marker):
    path.write_bytes(pickle.dumps(Planted(marker)))


def plant_garbage(path, marker):
    path.write_bytes(b"PK\x03\x04 not a zip, not a pickle")


def plant_partial_state(path, marker):
    torch.save({"fingerprint": "f", "epoch": 1}, path)       # loads, but is no checkpoint


@pytest.mark.hostile
@pytest.mark.parametrize("plant, problem", [
    (plant_torch_save, "it does not load as tensors and plain values (UnpicklingError)"),
    (plant_raw_pickle, "it does not load as tensors and plain values (UnpicklingError)"),
    (plant_garbage, "it does not load as tensors and plain values ("),
    (plant_partial_state, "it is not an rnnlab checkpoint (missing keys)"),
])
def test_checkpoint_that_is_not_plain_data_is_never_executed(task, tmp_path, caplog, plant,
                                                             problem):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt.pt"
    plant(ckpt, marker)
    assert not marker.exists()
    caplog.set_level(logging.INFO, logger="rnnlab.training.engine")
    epochs = []
    with warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("always")
        result = run(task, make(), tmp_path, epochs=2, on_epoch=lambda e, row: epochs.append(e))
    # our one log line; no warning of torch's about unpickling what it was given
    assert not [w for w in python_warnings if "serialization" in w.filename
                or "pickle" in str(w.message).lower()]
    assert not marker.exists()                                  # the pickle never ran
    assert result.resumed_from == 0 and epochs == [1, 2]        # trained from epoch 1
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 1
    assert logged[0].startswith(f"train: ignoring {ckpt}: {problem}")
    assert logged[0].endswith("training from epoch 1, this run's checkpoint replaces it")
    state = torch.load(ckpt, weights_only=True)                 # replaced by this run's
    assert state["epoch"] == 2 and state["fingerprint"] == "f"


@pytest.mark.hostile
def test_nan_loss_stops_with_a_clear_error(task, tmp_path):
    model = make()
    with torch.no_grad():
        model.out.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 1.*Set train.clip_norm"):
        run(task, model, tmp_path)


def test_step_losses_keep_every_value_across_blocks(monkeypatch):
    monkeypatch.setattr(_StepLosses, "BLOCK", 4)
    losses, values = _StepLosses(torch.device("cpu")), [0.5 * i for i in range(10)]
    for v in values:
        losses.add(torch.tensor(v))
    assert losses.all().tolist() == values


def test_an_epoch_keeps_no_tensor_per_step(task):
    """The step losses live until the epoch's end; one tensor each (500 small allocations
    between every step's large ones) split glibc's heap: gru_dropout's stage grew to 4.4 GB
    of RSS with 139 MB in use."""
    live, steps = [], []

    class Counting(FixedThreads):      # told after every step; counts after the 5th and 40th
        def step(self, seconds):
            steps.append(seconds)
            if len(steps) in (5, 40):
                gc.collect()
                # type(), not isinstance: the latter reads __class__, which
                # torch.distributed.reduce_op's deprecation wrapper answers with a warning
                live.append(sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects()))

    config = TrainConfig(epochs=1, steps_per_epoch=40, seed=11)
    fit(make(), task, config, torch.device("cpu"), progress=False, threads=Counting(1))
    assert len(steps) == 40 and live[-1] <= live[0], live


def test_clip_norm_bounds_each_update(task, monkeypatch):
    model = make("dense", units=(32,))
    norms = []
    orig = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        orig(params, max_norm, *a, **k)
        norms.append(torch.norm(torch.stack([p.grad.norm() for p in params])).item())

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)   # real clipping, then measure
    run(task, model, epochs=1, clip_norm=0.01)
    assert len(norms) == 6 and max(norms) <= 0.01 + 1e-6


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(RnnlabError, match=r"params.yaml: device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps; this machine has cpu"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RnnlabError, match=r"params.yaml: device 'cuda:0' is not available here; this machine has cpu"):
            resolve_device("cuda")
        with pytest.raises(RnnlabError, match=r"device 'cuda:3' is not available"):
            resolve_device("cuda:3")
    if not torch.backends.mps.is_available():
        with pytest.raises(RnnlabError, match="device 'mps' is not available"):
            resolve_device("mps")


@pytest.mark.parametrize("present, expected", [
    (["cpu", "cuda:0", "cuda:1", "mps"], "cuda:0"),   # cuda first, its first card
    (["cpu", "mps"], "mps"),
    (["cpu"], "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, present, expected):
    # No GPU on the test machines: what the hardware reports is the one thing stood in for.
    import rnnlab.training.device
    monkeypatch.setattr(rnnlab.training.device, "available_devices", lambda: present)
    assert str(resolve_device("auto")) == expected


@pytest.mark.parametrize("arch, kw", [("gru", {}), ("gru", {"dropout": 0.2, "recurrent_dropout": 0.3}),
                                      ("lstm", {})])
def test_evaluation_batch_size_changes_no_figure(task, arch, kw):
    from rnnlab.training.engine import evaluate
    model = make(arch, **kw)
    small = evaluate(model, task, "val", torch.device("cpu"), None)            # batches of 32
    big = JenaTask(task.windows["train"].features.numpy(), task.spec, batch_size=32,
                   eval_batch_size=1000, target_std=2.0)
    assert -(-big.eval_size("val") // big.eval_batch_size) == 1
    large = evaluate(model, big, "val", torch.device("cpu"), None)
    assert large.keys() == small.keys()
    for key in small:
        assert large[key] == pytest.approx(small[key], rel=1e-6), key


@pytest.mark.parametrize("arch, kw", [("gru", {"dropout": 0.2, "recurrent_dropout": 0.3}),
                                      ("lstm", {})])
def test_evaluation_batches_joined_change_no_figure(task, arch, kw):
    """A GPU evaluates several evaluation batches per forward pass (``eval_join``): the
    same figures, a cap still counted in batches of ``eval_batch_size``."""
    from rnnlab.training.engine import evaluate
    model = make(arch, **kw)
    n, size = task.eval_size("val"), task.eval_batch_size
    assert n > 4 * size and n % (4 * size)
    figures, passes = {}, []
    hook = model.register_forward_hook(lambda m, args, out: passes.append(len(args[0])))
    for cap in (None, 3):
        alone = evaluate(model, task, "val", torch.device("cpu"), cap, join=1)
        passes.clear()
        figures[cap] = joined = evaluate(model, task, "val", torch.device("cpu"), cap, join=4)
        rows = n if cap is None else cap * size
        assert passes == [min(4 * size, rows - s) for s in range(0, rows, 4 * size)], cap
        assert joined.keys() == alone.keys()
        for key in alone:
            assert joined[key] == pytest.approx(alone[key], rel=1e-6), (cap, key)
    hook.remove()
    assert figures[3]["mae"] != figures[None]["mae"]          # the cap cut the rows
    with pytest.raises(ValueError, match="join 0"):
        evaluate(model, task, "val", torch.device("cpu"), None, join=0)


def test_a_gpu_evaluates_about_2048_rows_per_pass():
    from rnnlab.training.engine import eval_join
    cuda = torch.device("cuda")          # a device object: no GPU needed to build one
    assert [eval_join(cuda, n) for n in (128, 1000, 2048, 4096)] == [16, 2, 1, 1]
    assert eval_join(torch.device("cpu"), 128) == 1


def test_evaluation_caps_count_batches_of_the_evaluation_size(task):
    from rnnlab.training.engine import evaluate
    capped = JenaTask(task.windows["train"].features.numpy(), task.spec, batch_size=32,
                      eval_batch_size=50, target_std=2.0)
    seen = [len(y) for _, y in capped.eval_batches("val", 3)]
    assert seen == [50, 50, 50]
    assert evaluate(make(), capped, "val", torch.device("cpu"), 3)["mae"] > 0


def test_one_log_line_per_epoch_with_the_time_left_and_bars_only_when_asked(task, caplog,
                                                                            capsys):
    """Without bars (stderr not a terminal) each epoch logs one line: epochs done, its time,
    the mean per epoch and the time left in the stage (this fit's epochs plus
    ``epochs_after``); with bars, tqdm draws the training and the validation passes."""
    caplog.set_level(logging.INFO, logger="rnnlab.training.engine")
    config = TrainConfig(epochs=2, steps_per_epoch=3, seed=1, max_eval_batches=2)
    fit(make(), task, config, torch.device("cpu"), progress=False, desc="gru seed 1",
        epochs_after=4)
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnlab.training.engine"]
    assert len(lines) == 2 and capsys.readouterr().err == ""
    for epoch, line in enumerate(lines, start=1):
        assert line.startswith(f"gru seed 1 epoch {epoch}/2: train_loss ")
        assert " s/epoch, about " in line and line.endswith(" left in this stage")

    caplog.clear()
    fit(make(), task, config, torch.device("cpu"), progress=True, desc="gru")
    lines = [r.getMessage() for r in caplog.records if r.name == "rnnlab.training.engine"]
    assert len(lines) == 2 and lines[-1].endswith("s/epoch, last epoch")
    bars = capsys.readouterr().err
    assert "gru 1/2" in bars and "gru 1/2 val" in bars and "gru 2/2 val" in bars


@pytest.mark.hostile
@pytest.mark.parametrize("layout", ["a folder at the checkpoint's path",
                                    "a file where its folder goes"])
def test_a_checkpoint_path_that_cannot_take_the_file_is_one_line_before_any_epoch(
        task, tmp_path, layout):
    """Before: a traceback after the first epoch (``os.replace`` onto a folder, ``mkdir``
    onto a file), the epoch's work lost."""
    folder = tmp_path / "checkpoints"
    ckpt = folder / "gru.pt"
    if layout.startswith("a folder"):
        ckpt.mkdir(parents=True)
        expected = (f"gru: {ckpt} is a folder, where this run writes its checkpoint file after "
                    "every epoch; remove or rename it, then rerun")
    else:
        folder.write_text("not a folder")
        expected = (f"gru: {folder} is a file, where the folder of the checkpoint {ckpt} goes; "
                    "remove or rename it, then rerun")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    epochs = []
    with pytest.raises(RnnlabError) as caught:
        fit(make(), task, TrainConfig(epochs=2, steps_per_epoch=6, seed=11), torch.device("cpu"),
            checkpoint=ckpt, on_epoch=lambda e, row: epochs.append(e), progress=False,
            desc="gru")
    assert str(caught.value) == expected
    assert epochs == []                                        # refused before any epoch
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # nothing written


@pytest.mark.hostile
def test_a_checkpoint_write_that_fails_mid_run_keeps_the_training(task, tmp_path, caplog):
    """A folder put in the checkpoint's place after epoch 1 (a disk filling up alike): each
    later write is one warning, and the run ends with the results of an unbroken one."""
    straight = run(task, make(), epochs=3)
    ckpt = tmp_path / "ckpt.pt"

    def block(epoch, row):
        if epoch == 1:
            ckpt.unlink()
            ckpt.mkdir()

    caplog.set_level(logging.INFO, logger="rnnlab.training.engine")
    result = run(task, make(), tmp_path, epochs=3, on_epoch=block)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(result.history) == strip(straight.history)
    assert result.val == straight.val and result.test == straight.test
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line.split(" (")[0] for line in logged] == [
        f"train: could not write the checkpoint {ckpt} after epoch {e}" for e in (2, 3)]
    assert all(line.endswith("; training goes on without it") for line in logged)
    assert not list(tmp_path.glob(".*.part"))                 # no temp file left


def test_a_task_on_its_device_gives_the_same_batches_and_training():
    """``to_device`` (what ``fit`` does on a GPU): the windows are gathered from the copy on
    the device, the same batches and the same training as from the host's."""
    import copy

    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (900, 4)).astype(np.float32)
    spec = make_window_spec(n_rows=900, lookback=60, step=6, delay=6, target_index=1,
                            splits={"train": (0, 500), "val": (501, 700), "test": (701, None)})
    host = JenaTask(features, spec, batch_size=16)
    device = copy.deepcopy(host)
    device.to_device(torch.device("cpu"))
    assert device.windows["val"].features is device.windows["train"].features   # one copy
    for (x1, y1), (x2, y2) in zip(host.train_batches(1, 4, 3), device.train_batches(1, 4, 3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert np.array_equal(host.training_rows(), device.training_rows())
    results = []
    for task in (host, device):
        seed_everything(5)
        model = build_model(ModelSpec(dataset="jena", arch="gru", epochs=1, units=(8,)), 4, 10)
        results.append(fit(model, task, TrainConfig(epochs=1, steps_per_epoch=4, seed=5),
                           torch.device("cpu"), progress=False))
    assert results[0].val == results[1].val


@pytest.mark.parametrize("form", ["keras2", "keras3"])
def test_rmsprop_equals_torch_optim_and_keras3_form(form):
    """engine.RMSprop's foreach form (every GPU's, and ``fused=False``): ``keras2`` bit for
    bit torch.optim.RMSprop (what fit used before), ``keras3`` bit for bit the tf.keras form
    written out (p -= lr g / sqrt(v + eps)); its state_dict round-trips, and torch.optim's
    loads into it."""
    from rnnlab.training.engine import RMSprop
    torch.manual_seed(0)
    weights = [torch.randn(6, 5), torch.randn(7)]
    grads = [[torch.randn_like(w) * s for w in weights] for s in (1.0, 1e-3, 1e-5, 0.0, 2.0)]
    ours = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = RMSprop(ours, lr=1e-3, alpha=0.9, eps=1e-7, form=form, fused=False)
    if form == "keras2":
        ref = [torch.nn.Parameter(w.clone()) for w in weights]
        ref_opt = torch.optim.RMSprop(ref, lr=1e-3, alpha=0.9, eps=1e-7)
    else:
        ref, avg = [w.clone() for w in weights], [torch.zeros_like(w) for w in weights]
    for step in grads:
        for p, g in zip(ours, step):
            p.grad = g.clone()
        opt.step()
        if form == "keras2":
            for p, g in zip(ref, step):
                p.grad = g.clone()
            ref_opt.step()
        else:
            for w, v, g in zip(ref, avg, step):
                v.mul_(0.9).addcmul_(g, g, value=0.1)
                w.addcdiv_(g, (v + 1e-7).sqrt(), value=-1e-3)
    for mine, theirs in zip(ours, ref):
        assert torch.equal(mine.detach(), theirs.detach())
    again = RMSprop([torch.nn.Parameter(w.clone()) for w in weights], lr=1e-3, alpha=0.9,
                    eps=1e-7, form=form)
    again.load_state_dict(opt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.square_avg, opt.square_avg))
    if form == "keras2":
        again.load_state_dict(ref_opt.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(again.square_avg, opt.square_avg))


@pytest.mark.parametrize("form", ["keras2", "keras3"])
def test_rmsprop_on_cpu_takes_one_cpp_pass_within_an_ulp_of_the_foreach_form(form):
    """On CPU tensors engine.RMSprop runs the C++ pass (rnnlab.nn.fused.rmsprop_update, its
    bits checked against numpy in test_fused.py); torch's foreach form differs from it only
    by torch's approximate CPU sqrt: within a few ulps of the parameters, or of lr (a
    step's size), after five steps.
    ``fused=True`` refuses tensors the pass cannot take."""
    from rnnlab.nn import fused
    from rnnlab.training.engine import RMSprop
    if not fused.available():
        pytest.skip(f"fused extension unavailable: {fused.unavailable_reason()}")
    torch.manual_seed(0)
    weights = [torch.randn(32, 300), torch.randn(7)]
    grads = [[torch.randn_like(w) * s for w in weights] for s in (1.0, 1e-3, 1e-5, 0.0, 2.0)]
    runs = []
    for mode in (None, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-7, form=form, fused=mode)
        before = fused.calls["rmsprop"]
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        assert fused.calls["rmsprop"] == before + (len(grads) if mode is None else 0)
        runs.append(params)
    for a, b in zip(*runs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=4e-7, atol=1e-3 * 4e-7)
    odd = torch.nn.Parameter(torch.randn(4, 4).t())
    odd.grad = torch.ones(4, 4)
    with pytest.raises(RnnlabError, match=r"fused=True\) takes contiguous CPU parameters"):
        RMSprop([odd], lr=1e-3, alpha=0.9, eps=1e-7, fused=True).step()
    # what the pass cannot take goes the foreach way: two dtypes, one parameter twice, and
    # averages loaded in another dtype than their parameter's
    mixed = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3).double())]
    shared = torch.nn.Parameter(torch.ones(3))
    loaded = torch.nn.Parameter(torch.ones(3).double())
    state = RMSprop([torch.nn.Parameter(torch.ones(3))], lr=1e-3, alpha=0.9, eps=1e-7)
    for p in (*mixed, shared, loaded):
        p.grad = torch.ones_like(p)
    state.params[0].grad = torch.ones(3)
    state.step()                                         # a float32 average
    for params, source in ((mixed, None), ([shared, shared], None), ([loaded], state)):
        opt = RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-7)
        if source is not None:
            opt.load_state_dict(source.state_dict())
        before = fused.calls["rmsprop"]
        opt.step()
        assert fused.calls["rmsprop"] == before


def test_a_training_stage_never_imports_torch_dynamo():
    """torch.optim's first use imports torch._dynamo (141 MiB of resident memory); fit's
    own RMSprop does not, so a training process stays without it."""
    import subprocess
    import sys
    code = """
import sys
import numpy as np
import torch
from rnnlab.data.windows import make_window_spec
from rnnlab.nn.models import ModelSpec, build_model
from rnnlab.training.engine import TrainConfig, fit
from rnnlab.training.tasks import JenaTask
features = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
spec = make_window_spec(n_rows=600, lookback=30, step=3, delay=3, target_index=1,
                        splits={"train": (0, 300), "val": (301, 450), "test": (451, None)})
task = JenaTask(features, spec, batch_size=16)
model = build_model(ModelSpec(dataset="jena", arch="gru", epochs=1, units=(4,)), 3, 10)
fit(model, task, TrainConfig(epochs=1, steps_per_epoch=3, seed=1), torch.device("cpu"),
    progress=False)
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def together(task, models, seeds, tmp_path=None, epochs=3, on_epochs=None):
    configs = [TrainConfig(epochs=epochs, steps_per_epoch=6, seed=s) for s in seeds]
    checkpoints = [tmp_path / f"s{s}.pt" if tmp_path else None for s in seeds]
    return fit_together(models, task, configs, torch.device("cpu"), checkpoints=checkpoints,
                        fingerprints=["f"] * len(seeds),
                        on_epochs=on_epochs or [None] * len(seeds),
                        descs=[f"seed {s}" for s in seeds], progress=False)


def alone(task, seed, kw, tmp_path=None, epochs=3, on_epoch=None):
    model = make_seeded(seed, **kw)
    config = TrainConfig(epochs=epochs, steps_per_epoch=6, seed=seed)
    result = fit(model, task, config, torch.device("cpu"), progress=False, on_epoch=on_epoch,
                 checkpoint=tmp_path / f"s{seed}.pt" if tmp_path else None, fingerprint="f",
                 desc=f"seed {seed}")
    return model, result


def make_seeded(seed, arch="gru", **kw):
    seed_everything(seed)
    return build_model(ModelSpec(dataset="jena", arch=arch, epochs=3, **kw), 14, 10)


@pytest.mark.parametrize("arch, kw", [
    ("gru", {"dropout": 0.2, "recurrent_dropout": 0.3}),
    ("lstm", {"recurrent_dropout": 0.25}),
    ("dense", {"units": (16,)}),
])
def test_seeds_side_by_side_train_as_each_would_alone(task, arch, kw):
    """fit_together takes turns between the seeds' steps; each keeps its own generators'
    state, so every seed's batches, dropout masks, losses and weights are the bits it gets
    trained alone."""
    seeds = [3, 5, 8]
    kw = {"arch": arch, **kw}
    separately = [alone(task, s, kw) for s in seeds]
    models = [make_seeded(s, **kw) for s in seeds]
    side_by_side = together(task, models, seeds)
    assert len({r.val["mae"] for _, r in separately}) == 3, "three seeds, three trainings"
    for (model_a, a), model_b, b in zip(separately, models, side_by_side):
        assert strip_seconds(a.history) == strip_seconds(b.history)
        assert (a.val, a.test, a.best_epoch) == (b.val, b.test, b.best_epoch)
        for (name, x), y in zip(model_a.state_dict().items(), model_b.state_dict().values()):
            assert torch.equal(x, y), name


@pytest.mark.hostile
def test_seeds_side_by_side_resume_each_from_its_own_checkpoint(task, tmp_path):
    """A stage killed after seed 5's second epoch (its seeds one after another) resumes
    side by side: seed 3 from the start, seed 5 after epoch 2, and both end as if never
    stopped; the restored epochs are reported again."""
    kw = {"dropout": 0.2, "recurrent_dropout": 0.3}
    straight = {s: alone(task, s, kw, epochs=4)[1] for s in (3, 5)}

    def kill_after_two(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        alone(task, 5, kw, tmp_path, epochs=4, on_epoch=kill_after_two)
    seen = {3: [], 5: []}
    results = together(task, [make_seeded(s, **kw) for s in (3, 5)], [3, 5], tmp_path,
                       epochs=4, on_epochs=[lambda e, row, s=s: seen[s].append(e)
                                            for s in (3, 5)])
    assert [r.resumed_from for r in results] == [0, 2]
    assert seen == {3: [1, 2, 3, 4], 5: [1, 2, 3, 4]}
    for seed, result in zip((3, 5), results):
        assert strip_seconds(result.history) == strip_seconds(straight[seed].history)
        assert result.val == straight[seed].val and result.test == straight[seed].test


@pytest.mark.hostile
def test_a_seed_that_diverges_side_by_side_is_named(task):
    models = [make_seeded(s) for s in (3, 5)]
    with torch.no_grad():
        models[1].out.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"^seed 5: the loss became nan at epoch 1, "
                                               r"step 1"):
        together(task, models, [3, 5])


def test_when_seeds_train_side_by_side(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("RNNLAB_SEEDS_TOGETHER", raising=False)
    assert (seeds_together(cpu, 3), seeds_together(cuda, 3), seeds_together(cuda, 1)) == \
        (False, True, False)
    monkeypatch.setenv("RNNLAB_SEEDS_TOGETHER", "1")
    assert seeds_together(cpu, 2) and not seeds_together(cpu, 1)
    monkeypatch.setenv("RNNLAB_SEEDS_TOGETHER", "0")
    assert not seeds_together(cuda, 3)
    monkeypatch.setenv("RNNLAB_SEEDS_TOGETHER", "yes")
    with pytest.raises(RnnlabError, match=r"RNNLAB_SEEDS_TOGETHER='yes': choose one of "
                                          r"auto, 1, 0"):
        seeds_together(cpu, 3)
