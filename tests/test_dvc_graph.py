"""dvc.yaml against the code: every stage depends on exactly the code it runs, no stage on
a data URL, and real DVC reruns what an edit touches and nothing else."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from _imports import ROOT, import_closure
from _project import set_params, sh

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PATHS = DVC_YAML["vars"][0]["paths"]


def stage_definitions() -> dict[str, dict]:
    """Each stage of dvc.yaml (the foreach ``train`` as one), ``${paths.*}`` resolved."""
    stages = {}
    for name, stage in DVC_YAML["stages"].items():
        stage = stage.get("do", stage)
        text = yaml.safe_dump(stage)
        text = re.sub(r"\$\{paths\.(\w+)\}", lambda m: PATHS[m.group(1)], text)
        stages[name] = yaml.safe_load(text)
    return stages


STAGES = stage_definitions()


def script_of(stage: dict) -> Path:
    (script,) = re.findall(r"python (stages/\w+\.py)", stage["cmd"])
    return ROOT / script


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith(("src/", "stages/"))}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name):
    stage = STAGES[name]
    needed, declared = import_closure(script_of(stage)), code_deps(stage)
    missing = sorted(needed - declared)
    assert not missing, f"dvc.yaml: stage {name!r} runs {missing} but does not list them in deps"
    extra = sorted(declared - needed)
    assert not extra, (f"dvc.yaml: stage {name!r} lists {extra} in deps but never imports "
                       "them: an edit there would rerun it for nothing")


def test_only_download_stages_read_data_urls():
    for name, stage in STAGES.items():
        data_params = [p for p in stage.get("params", []) if str(p).startswith("data")]
        if name.startswith("download_"):
            assert data_params == [f"data.{name.removeprefix('download_')}"]
        else:
            assert data_params == [], f"{name} depends on {data_params}: a mirror would rerun it"


def test_the_gradients_stage_reruns_on_the_train_keys_it_reads():
    """stages/gradients.py reads train.clip_norm and the quick-look caps (which shorten the
    study): each is a param of the stage, so a quick look reruns it and a full run again."""
    params = set(STAGES["gradients"]["params"])
    assert {"train.clip_norm", "train.max_epochs", "train.max_eval_batches"} <= params


def test_the_report_runs_with_one_half():
    """The report's deps exist with one half's data: no path inside data/prepared/<half>
    (DVC refuses to run a stage whose dep is missing), the folder above them instead."""
    deps = STAGES["report"]["deps"]
    assert "data/prepared" in deps
    assert not [d for d in deps if d.startswith(("data/prepared/", "data/raw"))], deps


def test_downloads_keep_the_old_copy_while_they_rerun():
    """persist: DVC does not delete a download's output before rerunning it, so a failed
    download leaves the old data (tests/test_pipeline.py checks it through DVC)."""
    for name in ("download_jena", "download_imdb"):
        (out,) = STAGES[name]["outs"]
        assert isinstance(out, dict) and list(out.values()) == [{"persist": True}], (name, out)


def changed_stages(repo: Path) -> set[str]:
    """The stages `dvc status` names, through DVC's own API (one process, not twenty)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        return {name.split(":")[-1] for name in dvc.status()}


def test_download_stages_never_depend_on_model_or_training_code():
    for name in ("download_jena", "download_imdb"):
        rooms = {d.split("/")[2] for d in code_deps(STAGES[name]) if d.startswith("src/rnnlab/")
                 and d.count("/") > 2}
        assert rooms <= {"core", "data"}, (name, rooms)


def edit(path: Path, old: str, new: str) -> bytes:
    original = path.read_bytes()
    text = original.decode()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))
    return original


def test_adding_an_architecture_reruns_only_training_and_the_report(pipeline_copy):
    """What docs/models.md says to do to add an architecture (its fields in the models
    schema, its builder registered beside the others), through real DVC: `dvc status`
    names the training stages and the report, never a download or a data stage."""
    repo = pipeline_copy
    assert changed_stages(repo) == set()
    trains = {n for n in sh(repo, "dvc", "stage", "list", "--names-only").stdout.split()
              if n.startswith("train@")}
    schema, models = repo / "src/rnnlab/nn/schema.py", repo / "src/rnnlab/nn/models.py"
    kept = [edit(schema, '    "lstm": Architecture(("jena",), ("units", "bidirectional", *_WINDOW)),\n',
                 '    "lstm": Architecture(("jena",), ("units", "bidirectional", *_WINDOW)),\n'
                 '    "wide_gru": Architecture(("jena",), (*_RECURRENT, *_WINDOW)),\n')]
    try:
        assert changed_stages(repo) == trains | {"report"}
        kept.append(edit(models, "\ndef build_model(",
                         '\n@register("wide_gru")\ndef _wide_gru(spec, n_features, timesteps):\n'
                         '    return REGISTRY["gru"](spec, n_features, timesteps)\n\n\n'
                         "def build_model("))
        assert changed_stages(repo) == trains | {"report"}
        # A data section's schema reruns what reads that section, nothing of the other half.
        kept.append(edit(repo / "src/rnnlab/data/imdb.py", "    max_features: int\n",
                         "    max_features: int   # edited\n"))
        # (The Jena data stages, naive and gradients read nothing of it.)
        assert changed_stages(repo) == trains | {"report", "tokenize_imdb"}
    finally:
        for path, original in zip((schema, models, repo / "src/rnnlab/data/imdb.py"), kept):
            path.write_bytes(original)
    assert changed_stages(repo) == set()


def test_a_mirror_with_the_same_checksum_reruns_only_its_download(pipeline_copy,
                                                                  small_jena_zip):
    """The tiny pipeline's Jena zip from another URL (a local copy: the server that served
    it lived only while the pipeline was built)."""
    repo = pipeline_copy
    params = yaml.safe_load((repo / "params.yaml").read_text())
    served = params["data"]["jena"]["url"]                 # http://127.0.0.1:<port>/jena.zip
    zip_path, md5 = small_jena_zip
    assert params["data"]["jena"]["md5"] == md5            # the zip the pipeline was built on
    mirror = repo.parent / "mirror" / "jena.zip"
    mirror.parent.mkdir()
    shutil.copy(zip_path, mirror)
    set_params(repo, data__jena__url=mirror.as_uri())
    try:
        assert changed_stages(repo) == {"download_jena"}
        out = sh(repo, "dvc", "repro").stdout
        assert re.findall(r"Running stage '([^']+)'", out) == ["download_jena"]
    finally:
        set_params(repo, data__jena__url=served)


def test_every_stage_is_kept_in_the_run_cache(tiny_pipeline):
    """After one `dvc repro`, DVC's run cache holds a record of every stage (its command),
    so `dvc exp run` and queued experiments restore unchanged stages instead of rerunning
    them. DVC 3 silently keeps a stage out when any output but a metric is `cache: false`,
    and when an output is `persist: true`: the downloads, whose old copy must survive a
    failed rerun (a queued experiment checks their data out of the cache by dvc.lock when
    git knows it, else downloads again: docs/sweeps.md)."""
    lock = yaml.safe_load((tiny_pipeline / "dvc.lock").read_text())["stages"]
    records = [yaml.safe_load(p.read_text())
               for p in (tiny_pipeline / ".dvc/cache/runs").rglob("*") if p.is_file()]
    missing = sorted(name for name, stage in lock.items()
                     if stage["cmd"] not in {r["cmd"] for r in records})
    assert missing == ["download_imdb", "download_jena"], f"no run-cache record for {missing}"
    assert len(records) == len(lock) - 2
