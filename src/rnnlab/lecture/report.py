"""The reproduction report: every variant's figures beside the lecture's published ones.

Reads what the stages wrote (``metrics/<variant>.json``, ``plots/<variant>.csv``) and
writes ``summary.md`` plus PNG charts. Nothing here trains or reads MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.core.atomic import atomic_output
from rnnlab.core.config import show
from rnnlab.core.errors import RnnlabError
from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import JenaParams
from rnnlab.nn.schema import ModelSpec
from rnnlab.training.params import TrainParams
from rnnlab.training.seeds import RunParams

# The lecture's validation figures (Chollet, Deep Learning with Python, 1st ed., ch. 6.3).
# Jena: MAE in normalized units; the book converts the naive 0.29 to 2.57 degC, so its
# temperature std is 2.57 / 0.29 = 8.86 degC, used below for the other models' degC.
LECTURE_JENA_MAE = {"naive": 0.29, "dense": 0.30, "gru": 0.265, "gru_dropout": 0.262,
                    "gru_stacked": 0.263, "gru_reversed": 0.40, "bigru": 0.262,
                    "conv_gru": 0.273}
LECTURE_DEGC_PER_UNIT = 2.57 / 0.29
LECTURE_IMDB_ACCURACY = {"imdb_dense": 0.88, "imdb_simplernn": 0.85, "imdb_lstm": 0.89,
                         "imdb_lstm_reversed": 0.88, "imdb_bilstm": 0.89}


KERAS_NOTE = ("*Keras here*: the lecture's own Keras code trained on this same prepared "
              "data (the same rows or reviews, split and vocabulary, whatever order they "
              "were stored in) with the same budget by `bench/bench_fidelity.py` (mean ± std "
              "over its seeds, from `docs/fidelity.json`); – where no such run matches this "
              "one's data and setup.")

# Keys of the prepared data's stats.json that change from run to run of the same data.
VOLATILE_STATS = ("seconds",)
# Lists whose order is only the order the data is stored in: the digest takes them as sets.
# (Since ce52e3f the IMDB splits are stored with the classes interleaved; the validation
# reviews are the same ones, the vocabulary and the tokens the same.)
UNORDERED_STATS = ("val_ids",)
# Keys added to stats.json later, with the value that every earlier file meant by leaving
# them out: stats written before and after the key was added digest the same.
ADDED_STATS: dict[str, Any] = {"not_utf8": []}


@dataclass(frozen=True)
class ReportParams:
    """What the report reads of params.yaml: every section a figure's setup names."""
    run: RunParams
    jena: JenaParams
    imdb: ImdbParams
    train: TrainParams
    models: dict[str, ModelSpec]
    distance: int              # gradients.distance: the vanishing ratio's distance


def data_digest(stats: Mapping[str, Any], *, ordered: bool = False) -> str | None:
    """A digest of what the prepared data holds, from its stats.json (source file digest,
    normalization, vocabulary and split counts, validation ids) without timings; None
    when the data was not prepared (no stats). Two runs with the same digest read the
    same data: the same rows or reviews, split, normalization or vocabulary, whatever order
    they are stored in (``UNORDERED_STATS``); ``ordered``: the same, stored in the same order
    too (what makes the same batches of a seed: bench_fidelity's pairs)."""
    if not stats:
        return None
    kept = {k: sorted(v) if k in UNORDERED_STATS and not ordered else v
            for k, v in stats.items()
            if k not in VOLATILE_STATS and not (k in ADDED_STATS and v == ADDED_STATS[k])}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def run_setup(params: ReportParams, spec: ModelSpec, digest: str | None,
              layout: str | None = None) -> dict[str, Any]:
    """What a side-by-side figure (bench/bench_fidelity.py) must share with a run to stand
    beside it: the data, the variant's windows or tokens, batch size and training budget.
    A capped evaluation (``train.max_eval_batches``) reads the first batches in stored
    order: then the data must be stored in the same order too (``layout``, the ordered
    digest, when given)."""
    if params.train.max_eval_batches is not None and layout is not None:
        digest = layout
    if spec.dataset == "jena":
        j = params.jena
        data = {"lookback": spec.lookback or j.lookback, "step": spec.step or j.step,
                "delay": j.delay, "batch_size": j.batch_size, "reverse": spec.reverse}
        steps = params.train.steps_per_epoch
    else:
        i = params.imdb
        data = {"max_features": i.max_features, "maxlen": i.maxlen,
                "batch_size": i.batch_size, "reverse": spec.reverse}
        steps = params.train.imdb_steps_per_epoch
    return {"data": digest, **data, "epochs": min(spec.epochs, params.train.max_epochs or spec.epochs),
            "steps": steps, "max_eval_batches": params.train.max_eval_batches}


def keras_figures(fidelity: Mapping[str, Any] | None, variant: str,
                  setup: Mapping[str, Any]) -> dict[str, Any] | None:
    """The lecture's Keras code's figures for ``variant`` from bench_fidelity's summary,
    when they were measured with exactly this run's ``setup``; else None."""
    for row in (fidelity or {}).get("rows", []):
        if row["variant"] == variant and row.get("setup") == dict(setup) and "keras" in row:
            return row["keras"]
    return None


@dataclass(frozen=True)
class DataSource:
    """What the prepared data says about where it came from: the md5 of the file that was
    downloaded (the Jena CSV, the IMDB tarball), None when that half was not prepared;
    ``content_check``: for a file with another md5, what showed that it holds the real
    data anyway (IMDB: the digest of its labelled reviews), None when nothing did."""
    name: str
    md5: str | None
    canonical_md5: str
    content_check: str | None = None
    digest: str | None = None        # data_digest of the prepared data
    layout: str | None = None        # the same, ordered=True: the order it is stored in

    @property
    def real(self) -> bool:
        return self.md5 is not None and (self.md5 == self.canonical_md5
                                         or self.content_check is not None)

    def describe(self) -> str:
        if self.md5 is None:
            return "not prepared in this workspace"
        if self.md5 == self.canonical_md5:
            return f"**real**: the canonical file (md5 `{self.md5}`)"
        if self.content_check is not None:
            return (f"**real**: another copy of the real data (md5 `{self.md5}`, not the "
                    f"canonical file's): {self.content_check}")
        return (f"**not the canonical file** (md5 `{self.md5}`): generated data "
                f"(`python -m rnnlab.data.synthetic`) or another copy; its figures are not "
                f"comparable with the lecture's unless that copy is the real data")


@dataclass
class Variant:
    name: str
    dataset: str
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    arch: str = ""

    def value(self, key: str) -> float | None:
        v = self.metrics.get(key)
        return float(v) if isinstance(v, (int, float)) else None

    def std(self, key: str) -> float | None:
        return self.value(f"{key}_std")


def rerun(path: Path) -> str:
    """The fix for a damaged ``metrics/<name>.json`` or ``plots/<name>.csv``: rerun the
    stage that writes it (``naive``, ``gradients``, else ``train@<name>``)."""
    name = Path(path).stem
    stage = name if name in ("naive", "gradients") else f"train@{name}"
    return f"rerun the stage that writes it: dvc repro -f {stage}"


def _read_text(path: Path, fix: str) -> str:
    """The file as UTF-8 text, or one line: a folder in its place, a byte not UTF-8."""
    if path.is_dir():
        raise RnnlabError(f"{path}: a folder, not a file; remove it (rm -r {path}) and "
                          f"{fix}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RnnlabError(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); {fix}") from None


def read_json(path: Path, fix: str | None = None) -> dict[str, Any]:
    fix = fix or rerun(path)
    try:
        data = json.loads(_read_text(path, fix))
    except FileNotFoundError:
        raise RnnlabError(f"{path}: not found; run the stage that writes it first "
                          f"(`dvc repro` runs them all)") from None
    except json.JSONDecodeError as e:
        raise RnnlabError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise RnnlabError(f"{path}: expected a JSON object of metrics, got {show(data)}; "
                          f"{fix}")
    return data


def read_metrics(path: Path) -> dict[str, Any]:
    """A variant's metrics file; ``per_seed`` (several seeds) must map each seed to its
    own metrics, as the training stage writes it."""
    data = read_json(path)
    per_seed = data.get("per_seed")
    if per_seed is not None and not (isinstance(per_seed, dict) and all(
            isinstance(v, dict) for v in per_seed.values())):
        raise RnnlabError(f"{path}: per_seed is {show(per_seed)}, not a mapping of each seed "
                          f"to its metrics; {rerun(path)}")
    return data


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    text = _read_text(path, rerun(path))
    rows = []
    # Line 1 is the header; a field that is not a number is named, line and column.
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            rows.append({k: float(v) for k, v in row.items()})
        except (TypeError, ValueError):
            column, value = next((k, v) for k, v in row.items() if not _number(v))
            raise RnnlabError(f"{path}: line {line}, column {show(column)}: {show(value)} is "
                              f"not a number; {rerun(path)}") from None
    return rows


def _number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def load_variants(models: Mapping[str, ModelSpec], metrics_dir: Path,
                  plots_dir: Path) -> list[Variant]:
    """Every variant of ``params.yaml: models`` with its metrics and per-epoch history."""
    variants = []
    for name, spec in models.items():
        path = metrics_dir / f"{name}.json"       # absent: not trained yet (a partial run)
        variants.append(Variant(name=name, dataset=spec.dataset,
                                metrics=read_metrics(path) if path.exists() else {},
                                history=read_history(plots_dir / f"{name}.csv"),
                                arch=spec.arch))
    return variants


def fmt(value: float | None, std: float | None = None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None else text


def best_epochs(v: Variant) -> str:
    """The best epoch, or each seed's (``2/2/1``) when several seeds trained."""
    per_seed = v.metrics.get("per_seed")
    if isinstance(per_seed, dict) and per_seed:
        return "/".join(str(s.get("best_epoch", "–")) for s in per_seed.values())
    return str(v.metrics.get("best_epoch", "–"))


def seconds(value: float | None) -> str:
    return fmt(value, digits=1 if value is None or value >= 1 else 2)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


NOT_RUN = ["not run", *["–"] * 11]


CAPPED = " (capped)"
CAPPED_NOTE = ("*(capped)*: a quick look, trained or evaluated under the caps its "
               "`metrics/<variant>.json` names in `capped` (`train.max_epochs`: fewer epochs "
               "than the variant's; `train.max_eval_batches`: part of the validation and test "
               "windows); not comparable with the lecture's figures.")


def name_cell(v: Variant) -> str:
    """The variant's name, marked when its figures come from a capped run."""
    return f"`{v.name}`" + (CAPPED if v.metrics.get("capped") else "")


def run_columns(v: Variant, trained: bool = True) -> list[str]:
    """The columns every table ends with: params, s/epoch, device, best epoch(s), seeds."""
    return [f"{int(v.value('n_params') or 0):,}",
            seconds(v.value("seconds_per_epoch")) if trained else "–",
            str(v.metrics.get("device", "–")),
            best_epochs(v) if trained else "–",
            str(v.metrics.get("n_seeds", 1)) if trained else "–"]


def keras_cell(figures: Mapping[str, Any] | None, key: str, digits: int = 3) -> str:
    """The Keras side-by-side figure: mean ± std (seeds), or – when none matches."""
    if figures is None:
        return "–"
    n = len(figures["seeds"])
    return f"{fmt(figures[key], figures.get(key + '_std') if n > 1 else None, digits)} ({n})"


def jena_rows(naive: Variant | None, variants: list[Variant],
              keras: Mapping[str, Mapping[str, Any] | None]) -> list[list[str]]:
    rows = []
    for v in ([naive] if naive else []) + variants:
        if not v.metrics:
            rows.append([f"`{v.name}`", *NOT_RUN])
            continue
        lecture = LECTURE_JENA_MAE.get(v.name)
        val = v.value("val_mae")
        rows.append([
            name_cell(v),
            fmt(val, v.std("val_mae")), fmt(v.value("val_mae_degc"), v.std("val_mae_degc"), 2),
            fmt(v.value("test_mae"), v.std("test_mae")),
            fmt(v.value("test_mae_degc"), v.std("test_mae_degc"), 2),
            "–" if lecture is None else f"{lecture:.3f} ({lecture * LECTURE_DEGC_PER_UNIT:.2f})",
            "–" if lecture is None or val is None else f"{val - lecture:+.3f}",
            keras_cell(keras.get(v.name), "val_mae"),
            *run_columns(v, trained=v.name != "naive"),
        ])
    return rows


def imdb_rows(variants: list[Variant],
              keras: Mapping[str, Mapping[str, Any] | None]) -> list[list[str]]:
    rows = []
    for v in variants:
        if not v.metrics:
            rows.append([f"`{v.name}`", *NOT_RUN])
            continue
        lecture = LECTURE_IMDB_ACCURACY.get(v.name)
        val = v.value("val_accuracy")
        rows.append([
            name_cell(v),
            fmt(val, v.std("val_accuracy")), fmt(v.value("test_accuracy"), v.std("test_accuracy")),
            fmt(v.value("val_auc"), v.std("val_auc")), fmt(v.value("test_auc"), v.std("test_auc")),
            "–" if lecture is None else f"{lecture:.2f}",
            "–" if lecture is None or val is None else f"{val - lecture:+.3f}",
            keras_cell(keras.get(v.name), "val_accuracy"),
            *run_columns(v),
        ])
    return rows


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# One look per line: colour, marker and dash all differ, and the first lines drawn are the
# widest, so curves that coincide (the demo's IMDB variants all at one accuracy) still show.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DASHES = ("-", "--", "-.", ":")


def zoom_range(variants: list[Variant], column: str, *, lower_is_better: bool,
               reference: float | None = None) -> tuple[float, float] | None:
    """The y range a second panel zooms on when one variant's curve dwarfs the others
    (its span over 3 times the next largest), else None. The zoom keeps every curve's best
    value and, for an error, the reference line (the naive MAE) with a margin."""
    curves = [[r[column] for r in v.history] for v in variants
              if v.history and column in v.history[0] and v.arch != "tfidf_logreg"]
    if len(curves) < 2:
        return None
    best = [min(c) if lower_is_better else max(c) for c in curves]
    edge = min(best) if lower_is_better else max(best)
    spans = sorted(max(abs(x - edge) for x in c) for c in curves)
    if spans[-1] <= 3 * spans[-2] or spans[-2] == 0:
        return None
    reach = spans[-2]
    if reference is not None:
        reach = max(reach, abs(reference - edge))
    pad = 0.08 * reach
    return (edge - pad, edge + reach + pad) if lower_is_better else (edge - reach - pad,
                                                                      edge + pad)


def curves_chart(path: Path, variants: list[Variant], column: str, ylabel: str, title: str,
                 hline: tuple[float, str] | None = None, *, lower_is_better: bool) -> None:
    """The validation curves of ``variants`` overlaid, one line per variant, each labelled
    with its best value; when one curve dwarfs the others, a second panel zooms on the rest.
    A variant of several seeds draws their mean per epoch, and its label says that its best
    is the mean curve's (the tables average each seed's best epoch: another figure)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    zoom = zoom_range(variants, column, lower_is_better=lower_is_better,
                      reference=hline[0] if hline else None)
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(14 if zoom else 10, 5), dpi=100,
                             squeeze=False)
    axes = axes[0]
    n_seeds = max((int(v.metrics.get("n_seeds", 1)) for v in variants if v.metrics), default=1)
    if n_seeds > 1:
        title += f" (mean over {n_seeds} seeds)"
    colours = plt.get_cmap("tab10").colors
    drawn = [v for v in variants if v.history and column in v.history[0]]
    seen: dict[tuple, str] = {}      # a curve's values -> the first variant drawn with them
    for ax in axes:
        for i, v in enumerate(drawn):
            values = [r[column] for r in v.history]
            best = min(values) if lower_is_better else max(values)
            twin = seen.setdefault(tuple(values), v.name)
            same = f" (same curve as {twin})" if twin != v.name else ""
            of = " of the mean" if v.metrics and int(v.metrics.get("n_seeds", 1)) > 1 else ""
            if v.arch == "tfidf_logreg":              # one fit, no epochs: a reference line
                ax.axhline(values[-1], color="grey", linestyle=":", linewidth=1.2,
                           label=f"{v.name} (one fit): {values[-1]:.3f}")
                continue
            ax.plot([r["epoch"] for r in v.history], values, color=colours[i % 10],
                    marker=MARKERS[i % len(MARKERS)], linestyle=DASHES[i % len(DASHES)],
                    markersize=max(3, 9 - i), linewidth=max(1.0, 3.2 - 0.3 * i),
                    alpha=0.9, label=f"{v.name}: best{of} {best:.3f}{same}")
        if hline is not None:
            ax.axhline(hline[0], color="black", linestyle="--", linewidth=1,
                       label=f"{hline[1]}: {hline[0]:.3f}")
        # min_n_ticks=1: one epoch spans 0.945..1.055, where the default (two integers or
        # fall back to fractions) drew ticks 0.950, 0.975, ... 1.050
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    if zoom:
        axes[1].set_ylim(*zoom)
        axes[1].set_title("the same, zoomed on the best curves (others leave the frame)",
                          fontsize=10)
    if axes[0].get_legend_handles_labels()[0]:
        axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def lecture_chart(path: Path, variants: list[Variant], key: str, lecture: Mapping[str, float],
                  ylabel: str, title: str) -> None:
    """Ours (validation and test, with seed std as error bars) beside the lecture's bar."""
    plt = _plt()
    names = [v.name for v in variants]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names) + 2), 4.5), dpi=100)
    width = 0.27
    xs = range(len(names))
    bars = []                                      # (x, height) of every bar drawn
    for offset, (label, split) in zip((-width, 0), (("ours, validation", "val"),
                                                   ("ours, test", "test"))):
        values = [v.value(f"{split}_{key}") or 0.0 for v in variants]
        errors = [v.std(f"{split}_{key}") or 0.0 for v in variants]
        ax.bar([x + offset for x in xs], values, width, label=label,
               **({"yerr": errors, "capsize": 3} if any(errors) else {}))
        bars += [(x + offset, h) for x, h in zip(xs, values)]
    ax.bar([x + width for x in xs], [lecture.get(n, 0.0) for n in names], width,
           label="lecture, validation", color="grey")
    # One variant far above the rest (the dense model's MAE, say): cut the axis above the
    # others and write the tall bars' values at the top, so the rest stay readable.
    per_variant = sorted({max(h for x, h in bars if round(x) == i) for i in xs})
    if len(per_variant) > 1 and per_variant[-1] > 3 * per_variant[-2] > 0:
        top = 1.3 * per_variant[-2]
        ax.set_ylim(0, top)
        for x, h in bars:
            if h > top:
                ax.annotate(f"{h:.2f} ↑", (x, top), xytext=(0, -4), rotation=90,
                            textcoords="offset points", ha="center", va="top", fontsize=8,
                            color="white", fontweight="bold")
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def data_line(label: str, source: DataSource, *, ran: bool, command: str) -> str:
    """The Data section's line for one half; a half none of whose stages wrote metrics is
    said not to have run (the report is then that of the other half)."""
    if ran:
        return f"- {label}: {source.describe()}."
    data = (f"its data {source.describe()}" if source.md5 is not None
            else "no prepared data")
    return (f"- {label}: **this half did not run** in this workspace (no metrics of its "
            f"stages, {data}): its rows say \"not run\"; `{command}` runs it.")


def write_report(params: ReportParams, metrics_dir: Path, plots_dir: Path, out: Path,
                 sources: Mapping[str, DataSource],
                 fidelity: Mapping[str, Any] | None = None) -> Path:
    """``out/summary.md`` and its four PNG charts (the outs of dvc.yaml's report stage);
    returns the summary's path. ``fidelity``: bench_fidelity's summary (docs/fidelity.json),
    whose Keras figures stand beside a variant's when they were measured on the same data
    with the same setup (``run_setup``)."""
    variants = load_variants(params.models, metrics_dir, plots_dir)
    keras = {name: keras_figures(fidelity, name,
                                 run_setup(params, spec, sources[spec.dataset].digest,
                                           sources[spec.dataset].layout))
             for name, spec in params.models.items() if spec.dataset in sources}
    jena = [v for v in variants if v.dataset == "jena"]
    imdb = [v for v in variants if v.dataset == "imdb"]
    naive_path = metrics_dir / "naive.json"
    naive = Variant("naive", "jena", read_metrics(naive_path)) if naive_path.exists() else None
    out.mkdir(parents=True, exist_ok=True)

    seeds = params.run.seeds or ()
    caps = {k: getattr(params.train, k) for k in ("max_epochs", "max_eval_batches")
            if getattr(params.train, k)}
    lines = ["# rnnlab: reproduction report", "",
             "Written by the `report` stage from `metrics/` and `plots/` "
             "(`dvc repro report`). The lecture's figures are its published validation "
             "numbers (Deep Learning with Python, ch. 6.3).", "",
             "## Data", "",
             data_line("Jena Climate", sources["jena"], ran=bool(naive) or any(
                 v.metrics for v in jena) or (metrics_dir / "gradients.json").exists(),
                       command="dvc repro --glob 'train@[!i]*' naive gradients"),
             data_line("IMDB reviews", sources["imdb"], ran=any(v.metrics for v in imdb),
                       command="dvc repro --glob 'train@imdb_*'"), ""]
    if caps:
        lines += [f"**Capped run** ({', '.join(f'train.{k} = {v}' for k, v in caps.items())}): "
                  "fewer epochs or evaluation batches than the lecture; a quick check, not a "
                  "reproduction.", ""]
    if seeds:
        lines += [f"Each variant trained once per seed ({', '.join(map(str, seeds))}); "
                  "figures are mean ± standard deviation (n - 1) over the seeds.", ""]
    else:
        lines += [f"One seed ({params.run.seed}) per variant: the lecture's reruns vary by "
                  "about 0.2 °C, so set `seeds: [1, 2, 3]` to see the spread.", ""]

    lines += ["## Jena temperature forecasting (24 h ahead)", "",
              "MAE in normalized units (°C in brackets: times the training split's std of "
              "the temperature). Lecture °C: its MAE times 2.57 / 0.29.", ""]
    lines += markdown_table(
        ["variant", "val MAE", "val °C", "test MAE", "test °C", "lecture val MAE (°C)",
         "val − lecture", "Keras here, val MAE (seeds)", "params", "s/epoch", "device",
         "best epoch", "seeds"],
        jena_rows(naive, jena, keras))
    lines += ["", *([CAPPED_NOTE, ""] if any(v.metrics.get("capped") for v in jena) else []),
              KERAS_NOTE, "", "![Jena validation curves](jena_validation.png)", "",
              "![Jena: ours vs the lecture](jena_vs_lecture.png)", ""]

    lines += ["## IMDB sentiment", "", "Accuracy and ROC AUC.", ""]
    lines += markdown_table(
        ["variant", "val acc", "test acc", "val AUC", "test AUC", "lecture val acc",
         "val − lecture", "Keras here, val acc (seeds)", "params", "s/epoch", "device",
         "best epoch", "seeds"],
        imdb_rows(imdb, keras))
    lines += ["", *([CAPPED_NOTE, ""] if any(v.metrics.get("capped") for v in imdb) else []),
              KERAS_NOTE, "", "![IMDB validation curves](imdb_validation.png)", "",
              "![IMDB: ours vs the lecture](imdb_vs_lecture.png)", ""]

    gradients = metrics_dir / "gradients.json"
    if gradients.exists():
        g = read_json(gradients)
        distance = params.distance
        def ratio(cell: str, when: str) -> str:       # the file holds log10(ratio)
            exponent = g.get(f"{cell}_log10_ratio_{distance}_{when}")
            return "–" if exponent is None else f"{10.0 ** exponent:.1e}"
        rows = [[cell, ratio(cell, "init"), ratio(cell, "trained")] for cell in ("rnn", "gru", "lstm")]
        capped = g.get("capped") or {}
        shortened = (" Capped: a quick look (" + ", ".join(f"`{k}` = {v}" for k, v in
                                                           capped.items()) + ")."
                     if capped else "")
        lines += ["## Vanishing gradients", "",
                  f"‖dL/dh‖ {distance} steps back over the one at the output "
                  f"(`metrics/gradients.json`; chart `plots/gradients.png`).{shortened}", ""]
        lines += markdown_table(["cell", "at initialization", "after training"], rows)
        def step(key: str) -> str:
            return {0: "never", None: "–"}.get(g.get(key), str(g.get(key)))
        def norm(key: str) -> str:
            return f"{g[key]:.3g}" if isinstance(g.get(key), (int, float)) else "–"
        # Both runs' largest norm is the gradient's before any clipping: the clipped run's
        # may be the larger (it trains on while the unclipped one stops at its divergence).
        lines += ["", "Exploding gradients (simple RNN, recurrent weights scaled up, plain "
                      "SGD), the same weights and batches twice. Without clipping: largest "
                      "finite gradient norm (no clipping: applied as computed) "
                      f"{norm('explode_max_grad_norm_noclip')}, first non-finite step "
                      f"{step('explode_diverged_step_noclip')}. Clipped to "
                      f"{norm('explode_clip_norm')}: largest gradient norm before clipping "
                      f"{norm('explode_max_grad_norm_clip')}, largest after clipping (the "
                      f"gradient applied) {norm('explode_max_applied_norm_clip')}, "
                      f"first non-finite step {step('explode_diverged_step_clip')}.", ""]

    naive_mae = naive.value("val_mae") if naive else None
    curves_chart(out / "jena_validation.png", jena, "val_mae", "validation MAE (normalized)",
                 "Jena: validation MAE per epoch",
                 None if naive_mae is None else (naive_mae, "naive persistence"),
                 lower_is_better=True)
    curves_chart(out / "imdb_validation.png", imdb, "val_accuracy", "validation accuracy",
                 "IMDB: validation accuracy per epoch", lower_is_better=False)
    lecture_chart(out / "jena_vs_lecture.png",
                  [v for v in ([naive] if naive else []) + jena if v.metrics], "mae",
                  LECTURE_JENA_MAE, "MAE (normalized)", "Jena: MAE, ours vs the lecture")
    lecture_chart(out / "imdb_vs_lecture.png", [v for v in imdb if v.metrics], "accuracy",
                  LECTURE_IMDB_ACCURACY,
                  "accuracy", "IMDB: accuracy, ours vs the lecture")
    summary = out / "summary.md"
    with atomic_output(summary) as tmp:
        tmp.write_text("\n".join(lines))
    return summary


def data_sources(*, jena: Path, imdb: Path) -> dict[str, DataSource]:
    """Each half's data identity from its prepared statistics (absent: not prepared)."""
    from rnnlab.data.imdb import CANONICAL_MD5 as IMDB_MD5
    from rnnlab.data.imdb import data_source as imdb_data_source
    from rnnlab.data.jena import CANONICAL_MD5 as JENA_MD5
    from rnnlab.data.jena import STATS_FILE

    def stats(path: Path, stage: str) -> dict[str, Any]:
        fix = f"rerun the stage that writes it: dvc repro -f {stage}"
        return read_json(path, fix) if path.exists() else {}
    jena_stats = stats(Path(jena) / STATS_FILE, "normalize_jena")
    imdb_stats = stats(Path(imdb) / "stats.json", "tokenize_imdb")
    check = None
    if imdb_data_source(imdb_stats) == "real":
        n = sum(imdb_stats["review_counts"].values())
        check = (f"its {n:,} labelled reviews (12,500 per folder) have the real corpus' "
                 f"digest (sha256 `{imdb_stats['reviews_sha256'][:16]}…`, `rnnlab.data.imdb."
                 "reviews_digest`)")
    return {"jena": DataSource("jena", jena_stats.get("csv_md5"), JENA_MD5,
                               digest=data_digest(jena_stats),
                               layout=data_digest(jena_stats, ordered=True)),
            "imdb": DataSource("imdb", imdb_stats.get("archive_md5"), IMDB_MD5, check,
                               digest=data_digest(imdb_stats),
                               layout=data_digest(imdb_stats, ordered=True))}
