"""A predictor chapter in one call: load, (search the learning rate), train each scenario, evaluate.

A run is described by one value, a :class:`RunSpec` (the predictor record's budget with some
fields changed); :func:`run_chapter` returns a :class:`ChapterRun` holding every run and the
numbers a chapter shows (metrics, learning curves, per-gene tables, whether each scenario beats
the training mean, completed − raw or − masked), and writes the chapter's closing bullet points
from them (:meth:`ChapterRun.what_we_saw`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .. import completion as completion_stage
from .. import datasets, models, paths, results
from ..registry import get_spec
from ..completion import CompletionMethod
from ..models import BudgetName
from ..models.data import PAPER_PAIR, SCENARIOS, ZERO_FILLED, PredictionData, Scenario, prediction_data
from .references import reference_rows
from .engine import DEFAULT_LR_GRID, PredictorConfig, PredictorRun, search_learning_rate, train_predictor, trivial_baseline

__all__ = ["COST_FIELDS", "ChapterRun", "RunSpec", "budget_costs", "complete_for", "parse_scenarios", "run_chapter",
           "row_hash", "split_scenario"]


#: The seed of the learning-rate search (one search per dataset and predictor, for every seed).
LR_SEARCH_SEED = 0


def parse_scenarios(scenario: str | Sequence[str]) -> list[str]:
    """``"both"`` → ``["raw", "completed"]``, ``"all"`` → the four scenarios; a name or list is
    checked. ``"completed:<method>"`` is the completed scenario with the targets of another
    completion method (a name of :data:`spared_utils.completion.METHODS`), run beside ``completed``."""
    if scenario == "both":
        return list(PAPER_PAIR)
    names = list(SCENARIOS) if scenario == "all" else ([scenario] if isinstance(scenario, str) else list(scenario))
    for s in names:
        base, _, method = str(s).partition(":")
        if base not in SCENARIOS or (method and (base != "completed" or method not in completion_stage.METHODS)):
            raise ValueError(f"unknown scenario {s!r}: a scenario is one of {SCENARIOS}, 'completed:<method>' with a "
                             f"method of {completion_stage.METHODS}, 'both' (raw and completed, the paper's pair) "
                             "or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"a scenario is listed twice in {names}")
    return names


def split_scenario(name: str, completion: str = "spackle") -> tuple[str, str]:
    """``"completed:spackle_plus"`` → ``("completed", "spackle_plus")``; a plain scenario name
    → ``(name, completion)`` (the method behind a plain ``completed``)."""
    base, _, method = name.partition(":")
    return base, method or completion


@dataclass
class ChapterRun:
    """What :func:`run_chapter` returns: one run per scenario and the tables a chapter shows."""

    dataset: str
    model: str
    config: PredictorConfig
    adata: AnnData
    data: dict[str, PredictionData]
    runs: dict[str, PredictorRun]
    baseline: pd.DataFrame
    lr_table: pd.DataFrame | None
    learning_rate: float
    seconds: float
    #: seed → scenario → metrics table, for the seeds after the first (:attr:`RunSpec.seed` a list)
    other_seeds: dict[int, dict[str, pd.DataFrame]] = field(default_factory=dict)

    def all_runs(self) -> pd.DataFrame:
        """Every run of the chapter, one row per (seed, scenario, split): MSE and PCC-Gene (the
        first seed's runs are the ones the figures show)."""
        seed = self.config.train.seed
        tables = {seed: {s: r.metrics for s, r in self.runs.items()}, **self.other_seeds}
        frames = [m.assign(seed=sd, scenario=s) for sd, runs in tables.items() for s, m in runs.items()]
        table = pd.concat(frames, ignore_index=True)
        return table[["seed", "scenario", "split", "mse", "pcc_gene"]]

    @property
    def histories(self) -> dict[str, pd.DataFrame]:
        return {s: r.history for s, r in self.runs.items()}

    @property
    def baseline_val_loss(self) -> float:
        """Validation MSE of the trivial predictor (the same in every scenario) on the validation spots."""
        return next(iter(self.runs.values())).baseline_val_loss

    @property
    def eval_split(self) -> str:
        """The split shown in maps and gene tables: test if the dataset has one, else val."""
        first = next(iter(self.runs.values()))
        return "test" if "test" in first.predictions else "val"

    def beats_training_mean(self, split: str | None = None) -> dict[str, bool]:
        """Scenario → whether its model's MSE on ``split`` (default: :attr:`eval_split`) is below
        the trivial predictor's on the same spots (from :meth:`summary`)."""
        table = self.summary()
        table = table[(table["split"] == (split or self.eval_split)) & table["training_mean_mse"].notna()]
        return {row.scenario: bool(row.beats_training_mean) for row in table.itertuples()}

    def completed_minus(self, reference: str | None = None, split: str | None = None) -> dict:
        """``{"reference": ..., "mse": ..., "pcc_gene": ...}``: completed-scenario metric minus the
        ``reference`` scenario's on ``split`` (both scored on real values only). ``reference``
        defaults to ``raw`` (the paper's pair) when it ran, else ``masked``; empty when the
        completed or the reference scenario did not run."""
        if reference is None:
            reference = next((s for s in ("raw", "masked") if s in self.runs), None)
        if reference is None or not {reference, "completed"} <= set(self.runs):
            return {}
        split = split or self.eval_split
        ref = self.runs[reference].metrics.set_index("split").loc[split]
        done = self.runs["completed"].metrics.set_index("split").loc[split]
        return {"reference": reference, **{k: float(done[k] - ref[k]) for k in ("mse", "pcc_gene")}}

    def completed_minus_raw(self, split: str | None = None) -> dict[str, float]:
        """``{"mse": ..., "pcc_gene": ...}``: completed minus raw on ``split`` (see
        :meth:`completed_minus`); empty unless both scenarios ran."""
        diff = self.completed_minus("raw", split)
        return {k: v for k, v in diff.items() if k != "reference"}

    def summary(self) -> pd.DataFrame:
        """One row per scenario and evaluated split: the model's MSE and PCC-Gene, the training
        mean's MSE on the same spots, whether the model beats it, and the best validation iteration."""
        base = self.baseline.set_index("split")["mse"]
        rows = []
        for scenario, run in self.runs.items():
            for rec in run.metrics.to_dict("records"):
                mean = float(base.get(rec["split"], np.nan))
                rows.append({"scenario": scenario, "split": rec["split"], "mse": rec["mse"],
                             "training_mean_mse": mean, "beats_training_mean": bool(rec["mse"] < mean),
                             "pcc_gene": rec["pcc_gene"], "best_iteration": run.train.best_iteration})
        return pd.DataFrame(rows)

    def what_we_saw(self, notes: Sequence[str] = ()) -> str:
        """The chapter's closing bullet points (Markdown) from this run's numbers: size, budget and
        time, whether each scenario beats the training mean (and what to try where one does not),
        completed − raw (else − masked), best and worst gene, then ``notes`` (one Markdown line
        each, e.g. ``"- ..."``: what the chapter's own sections measured)."""
        split, cfg, run = self.eval_split, self.config.train, next(iter(self.runs.values()))
        verdict = self.beats_training_mean()
        behind = [s for s, ok in verdict.items() if not ok]
        shown = "completed" if "completed" in self.runs else next(iter(self.runs))
        genes = self.gene_tables()[shown].set_index("gene")["pcc"]
        best, worst = self.best_and_worst_genes(shown)
        unit = "neighbouring spots of one slide" if run.task.per_slide else "spots"
        steps = ("closed-form fit (no training steps)" if run.task.closed_form else
                 f"{cfg.iterations} iterations × {cfg.batch_size} {unit} at learning rate {self.learning_rate:g} per scenario")
        lines = [f"- **{models.display_name(self.model)}**: {run.n_params:,} trainable parameters; {steps}, on "
                 f"`{run.train.device}` ({self.seconds:.0f} s for the whole chapter)."]
        lines.append(f"- Below the training mean on {split} MSE: "
                     + ", ".join(f"{s} {'yes' if ok else 'no'}" for s, ok in verdict.items()) + ".")
        for scenario in behind:
            run_s = self.runs[scenario]
            if scenario in ZERO_FILLED:
                d, r = run_s.task.data, run_s.rows[split]
                missing = 1.0 - float(d.real[d.rows("train")].mean())
                bias = float((run_s.predictions[split] - d.truth[r])[d.real[r]].mean())
                lines.append(f"  - Why not ({scenario}): its targets are 0 at the {missing:.0%} of training values that "
                             f"were missing and its loss reads them (the paper's raw scenario): on {split} its "
                             f"predictions are {bias:+.2f} off the real values on average (log scale); the `masked` "
                             "scenario skips the missing values instead.")
            elif not run_s.task.closed_form:
                lines.append(f"  - Why not ({scenario}): {learning_trend(run_s.history, self.baseline_val_loss)}")
        diff = self.completed_minus()
        if diff:
            instead = ("with the loss on real values only (masked)" if diff["reference"] == "masked"
                       else f"{diff['reference']} data")
            lines.append(f"- Training on completed instead of {instead} changed {split} MSE by {diff['mse']:+.3f} "
                         f"and PCC-Gene by {diff['pcc_gene']:+.3f} (both scored on real values only).")
        lines.append(f"- Per gene ({shown}, {split}): best {best} (PCC {genes[best]:.2f}), worst {worst} "
                     f"(PCC {genes[worst]:.2f}).")
        if behind:
            weights = "" if self.config.pretrained else " or set `pretrained = True`"
            lines.append(f"- At this budget the {' and '.join(behind)} model(s) learned no more than the mean: raise "
                         f"`iterations` (the learning curve shows whether it still falls){weights}.")
        return "## What we saw\n\n" + "\n".join([*lines, *notes]) + "\n"

    def metrics(self) -> pd.DataFrame:
        """Tidy table: one row per (scenario or ``training mean``, split) with the metrics."""
        frames = [r.metrics.assign(scenario=s, model=models.display_name(self.model), n_params=r.n_params,
                                   wall_time_s=r.train.wall_time_s) for s, r in self.runs.items()]
        frames.append(self.baseline.assign(model="training mean", n_params=0))
        table = pd.concat(frames, ignore_index=True)
        front = ["model", "scenario", "split", "mse", "pcc_gene", "pcc_global", "mae", "n_spots", "n_values"]
        return table[[c for c in front if c in table] + [c for c in table if c not in front]]

    def gene_tables(self, split: str | None = None) -> dict[str, pd.DataFrame]:
        split = split or self.eval_split
        return {s: r.gene_tables[split] for s, r in self.runs.items() if split in r.gene_tables}

    def best_and_worst_genes(self, scenario: str | None = None, split: str | None = None) -> tuple[str, str]:
        """Genes with the highest and lowest PCC (NaN skipped) in one scenario's evaluation."""
        scenario = scenario or next(iter(self.runs))
        table = self.runs[scenario].gene_tables[split or self.eval_split].dropna(subset=["pcc"])
        if table.empty:
            genes = self.data[scenario].genes
            return str(genes[0]), str(genes[-1])
        table = table.sort_values("pcc")
        return str(table["gene"].iloc[-1]), str(table["gene"].iloc[0])

    def map_inputs(self, scenario: str, split: str | None = None, slide: str | None = None):
        """``(slide, rows, predictions)`` of one evaluated slide, for :func:`plots.predicted_vs_true_maps`."""
        split = split or self.eval_split
        run, data = self.runs[scenario], self.data[scenario]
        rows, pred = run.rows[split], run.predictions[split]
        slides = data.slides[rows]
        slide = slide or pd.Series(slides).value_counts().index[0]
        keep = slides == slide
        return slide, rows[keep], pred[keep]


def learning_trend(history: pd.DataFrame, baseline: float) -> str:
    """One sentence, from a learning curve, on why a model is not below the training mean.

    It reads the validation MSE at each evaluation: where it started, where it was lowest, and
    whether it was still falling at the end (the budget stops it: more ``iterations``) or rose
    after its best (overfitting or too high a learning rate). ``baseline``: the training mean's
    validation MSE on the same spots.
    """
    val = history["val_loss"].to_numpy(dtype=float)
    its = history["iteration"].to_numpy()
    if len(val) == 0:
        return "no validation was run."
    best = int(np.nanargmin(val))
    text = (f"validation MSE went from {val[0]:.3f} (iteration {its[0]}) to a best of {val[best]:.3f} "
            f"(iteration {its[best]}; training mean {baseline:.3f})")
    if len(val) == 1:
        return text + "; one evaluation cannot show a trend: raise `iterations` or lower `eval_every`."
    if best == len(val) - 1:
        per = (val[-2] - val[-1]) / max(int(its[-1] - its[-2]), 1)
        gap = val[-1] - baseline
        more = f", about {gap / per:,.0f} more iterations at that pace" if per > 0 and gap > 0 else ""
        return (text + f", still falling at the last evaluation ({per:.4f} per iteration): the budget stops it"
                f"{more}; raise `iterations` (or use `budget='paper'`).")
    return (text + f", then rose to {val[-1]:.3f} by iteration {its[-1]}: more steps do not help at this learning "
            "rate; try a lower `learning_rate` (or `learning_rate='search'`).")


#: A cost override of :class:`RunSpec`: a number, ``"all"`` (every spot) or ``None`` (the budget's).
CostOverride = int | float | str | None
#: The cost fields of a budget that a run may override: those of :class:`spared_utils.models.Budget`
#: but its learning rate (:attr:`RunSpec.learning_rate`, which may also be ``"search"``).
COST_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(models.Budget) if f.name != "learning_rate")


@dataclass(frozen=True)
class RunSpec:
    """One predictor chapter's run, as one value: the record's budget with some fields changed.

    Parameters
    ----------
    model
        A name of :data:`spared_utils.models.NAMES`.
    dataset
        A dataset id of ``data/datasets.yml``.
    scenario
        One name of :data:`~spared_utils.models.data.SCENARIOS` (or ``"completed:<method>"``), a
        list of them, ``"both"`` (``raw`` and ``completed``, the paper's pair) or ``"all"``; kept
        as the tuple of names (:func:`parse_scenarios`).
    budget
        ``"cpu"`` or ``"paper"``: the predictor record's budget
        (:meth:`spared_utils.models.PredictorRecord.budget`; the CPU budget also applies the
        record's ``cpu_options``).
    learning_rate
        ``None`` (the budget's), a number, or ``"search"``: the paper's protocol, ``lr_grid``
        searched on the raw scenario at seed :data:`LR_SEARCH_SEED`, then fixed for every scenario.
    costs
        Overrides of the budget's fields (:data:`COST_FIELDS`), e.g. ``{"iterations": 500}``;
        ``"all"`` for a ``*_spots`` field reads every spot. ``None`` values are ignored.
    completion
        The completion method behind the ``completed`` scenario's targets (a name of
        :data:`spared_utils.completion.METHODS`; the paper's: ``"spackle"``).
    completion_iterations
        The budget of a completion method that trains (``None``: the book's CPU budget).
    seed
        The seed of every draw of a run, or a list of seeds: every scenario is then trained once
        per seed (each run its own rows and checkpoint), and the chapter shows the first seed's
        runs (:attr:`ChapterRun.runs`) beside a table of all of them (:meth:`ChapterRun.all_runs`).
        Kept as an int, or a tuple of several.
    device, pretrained, out_dir
        As :class:`PredictorConfig` and :func:`spared_utils.paths.output_dir`.
    model_options
        Options of the record's builder (its ``options``, e.g. ``width`` for ShuffleNet).
    options
        Any other field of :class:`PredictorConfig` or :class:`~spared_utils.training.TrainConfig`
        (``progress``, ``amp``, ``num_workers``, ``setup``, ...).
    """

    model: str
    dataset: str = "synthetic"
    scenario: tuple[Scenario, ...] = PAPER_PAIR
    budget: BudgetName = "cpu"
    learning_rate: float | str | None = None
    lr_grid: tuple[float, ...] = DEFAULT_LR_GRID
    costs: Mapping[str, CostOverride] = field(default_factory=dict)
    completion: CompletionMethod = "spackle"
    completion_iterations: int | None = None
    seed: int | tuple[int, ...] = 0
    device: str = "auto"
    pretrained: bool = False
    out_dir: str | None = "results"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        record = models.record(self.model)  # an unknown name raises with the known ones
        object.__setattr__(self, "scenario", tuple(parse_scenarios(self.scenario)))
        object.__setattr__(self, "lr_grid", tuple(float(v) for v in self.lr_grid))
        seeds = [self.seed] if isinstance(self.seed, (int, np.integer)) else list(self.seed)
        if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(v, (int, np.integer)) for v in seeds):
            raise ValueError(f"seed must be a whole number or a list of distinct ones, got {self.seed!r}")
        object.__setattr__(self, "seed", int(seeds[0]) if len(seeds) == 1 else tuple(int(v) for v in seeds))
        if self.budget not in models.BUDGETS:
            raise ValueError(f"budget must be one of {models.BUDGETS}, got {self.budget!r}")
        unknown = set(self.costs) - set(COST_FIELDS)
        if unknown:
            raise TypeError(f"unknown cost override(s) {sorted(unknown)} for {record.name}; valid: {COST_FIELDS}")
        if self.completion not in completion_stage.METHODS:
            raise ValueError(f"unknown completion method {self.completion!r}; choose one of {completion_stage.METHODS}")
        if isinstance(self.learning_rate, str) and self.learning_rate != "search":
            raise ValueError(f"learning_rate must be a number, None or 'search', got {self.learning_rate!r}")

    @classmethod
    def make(cls, model: str, **flat: Any) -> RunSpec:
        """A spec from flat keywords: this class's fields, the cost fields (:data:`COST_FIELDS`)
        and the record's builder options (``record.options``; ``None``: the budget's) go where they
        belong, any other name to :attr:`options` (checked when :meth:`config` builds the run's configuration)."""
        record = models.record(model)
        flat = dict(flat)
        costs = {**flat.pop("costs", {}), **{k: flat.pop(k) for k in COST_FIELDS if k in flat}}
        builder = {k: flat.pop(k) for k in record.options if k in flat}
        builder = {**{k: v for k, v in builder.items() if v is not None}, **flat.pop("model_options", {})}
        options = dict(flat.pop("options", {}))
        names = {f.name for f in fields(cls)}
        options.update({k: flat.pop(k) for k in list(flat) if k not in names})
        return cls(model=model, costs={k: v for k, v in costs.items() if v is not None}, model_options=builder,
                   options=options, **flat)

    @classmethod
    def from_parameters(cls, model: str, parameters: Mapping[str, Any]) -> RunSpec:
        """The spec of a chapter's run from its (papermill) parameters, e.g. the chapter's ``globals()``:
        the names :meth:`make` knows are read from it when present, every other name is ignored."""
        record = models.record(model)
        known = ({f.name for f in fields(cls)} - {"model", "costs", "model_options", "options"}) \
            | set(COST_FIELDS) | set(record.options)
        return cls.make(model, **{k: parameters[k] for k in known if k in parameters})

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds of the run, first (the one the chapter shows) first."""
        return self.seed if isinstance(self.seed, tuple) else (self.seed,)

    def config(self) -> PredictorConfig:
        """The run's :class:`PredictorConfig` (scenario ``raw``; the learning rate is the budget's
        when it is searched): the record's budget with :attr:`costs`, its CPU options under the CPU
        budget, and its setup options."""
        record = models.record(self.model)
        options = dict(self.options)
        model_options = {**(dict(record.cpu_options) if self.budget == "cpu" else {}),
                         **options.pop("model_options", {}), **self.model_options}
        if record.setup_options is not None and "setup" not in options:
            # e.g. a model trained first, at this run's budget and overrides: the run its own chapter
            # makes with the same parameters (so its checkpoint is reused)
            shared = {k: v for k, v in self.costs.items() if k not in ("train_spots",)}
            options["setup"] = record.setup_options(lambda name: budget_costs(name, self.budget, **shared))
        search = self.learning_rate == "search"
        costs = budget_costs(self.model, self.budget, learning_rate=None if search else self.learning_rate,
                             **self.costs)
        return PredictorConfig.make(model=self.model, scenario="raw", completion=self.completion, seed=self.seeds[0],
                                    device=self.device, pretrained=self.pretrained, model_options=model_options,
                                    **costs, **options)


def run_chapter(spec: RunSpec, adata: AnnData | None = None, store=None) -> ChapterRun:
    """Everything a predictor chapter computes, in one call.

    Loads the dataset's curated stage and its patches (:func:`spared_utils.datasets.load` and
    :func:`spared_utils.datasets.patch_store`, unless ``adata`` and ``store`` are given) and, when
    a ``completed`` scenario runs, the completion the spec names
    (:func:`spared_utils.completion.ensure`: the stored artefact of that method, budget and seed,
    made and stored when missing; given data that carry a completed layer are used as they are
    for ``"spackle"``), searches the learning rate
    when ``spec.learning_rate`` is ``"search"`` (on the raw scenario at seed
    :data:`LR_SEARCH_SEED` whatever the spec's seed, so it is done once per dataset and predictor
    and its finished checkpoints serve every other scenario and seed; the rate is then fixed for
    every scenario, as the paper does), trains and evaluates one run per scenario and seed and writes
    the results rows (plus the trivial predictor's, stage ``predict_baseline``, per seed). A
    ``completed:<method>`` scenario reads that method's completion at the run's seed.
    """
    t0 = time.perf_counter()
    scenarios, dataset, model, out_dir = list(spec.scenario), spec.dataset, spec.model, spec.out_dir
    base = spec.config()
    search = spec.learning_rate == "search"
    # data the caller gives with a completed layer is its SpaCKLE completion, as given
    given = adata is not None and store is not None and completion_stage.COMPLETED_LAYER in adata.layers
    if adata is None or store is None:
        adata = datasets.load(dataset, progress=base.train.progress)
        store = datasets.patch_store(dataset, adata, progress=base.train.progress)

    lr_table = None
    lr = base.train.learning_rate
    if search:
        # once per dataset and predictor: the same raw-scenario runs at seed LR_SEARCH_SEED for
        # every scenario and seed, so a second notebook (or a resumed one) finds them finished
        lr, lr_table = search_learning_rate(prediction_data(adata, store, "raw"), base.with_train(seed=LR_SEARCH_SEED),
                                            spec.lr_grid, dataset=dataset, out_dir=out_dir)
    shown, others = None, {}
    for seed in spec.seeds:
        config = base.with_train(learning_rate=float(lr), seed=seed)
        data = _scenario_data(spec, adata, store, given, seed, config)
        runs = {s: train_predictor(data[s], replace(config, scenario=data[s].scenario,
                                                    completion=split_scenario(s, spec.completion)[1]),
                                   dataset=dataset, out_dir=out_dir)
                for s in scenarios}
        # The trivial predictor (each gene's mean over its real training values, the same for every
        # scenario), scored on the same spots as the runs.
        ref = scenarios[0]
        baseline = trivial_baseline(data[ref], rows=runs[ref].rows).assign(scenario="any")
        rows = [{"stage": "predict_baseline", "dataset": dataset, "model": "training_mean",
                 "learning_rate": float("nan"), "seed": seed, "n_params": 0, "eval_spots": config.eval_spots, **r}
                for r in baseline.to_dict("records")]
        # and the references: an image-free null and the measured neighbours (predict.references)
        rows += reference_rows(data[ref], runs[ref].rows, dataset, seed, config.eval_spots)
        if rows:
            results.append(rows, path=paths.output_dir(out_dir) / results.STORE_NAME)
        if shown is None:
            shown = (config, data, runs, baseline)
        else:  # only the numbers of the other seeds stay in memory
            others[seed] = {s: r.metrics for s, r in runs.items()}
    config, data, runs, baseline = shown
    return ChapterRun(dataset=dataset, model=model, config=config, adata=adata, data=data, runs=runs,
                      baseline=baseline, lr_table=lr_table, learning_rate=float(lr),
                      seconds=time.perf_counter() - t0, other_seeds=others)


def _scenario_data(spec: RunSpec, adata: AnnData, store, given: bool, seed: int,
                   config: PredictorConfig) -> dict[str, PredictionData]:
    """Each scenario's :class:`PredictionData` at ``seed``: a ``completed`` scenario reads the
    completion its name (or ``spec.completion``) asks for, at this seed
    (:func:`complete_for`; given data with a completed layer are their own SpaCKLE completion)."""
    completed = {}
    out = {}
    for name in spec.scenario:
        base, method = split_scenario(name, spec.completion)
        if base != "completed":
            out[name] = prediction_data(adata, store, base)
            continue
        if method not in completed:
            completed[method] = adata if (given and method == "spackle") else complete_for(
                adata, method, seed=seed, device=config.train.device, iterations=spec.completion_iterations,
                progress=config.train.progress, dataset=spec.dataset)
        out[name] = prediction_data(completed[method], store, "completed")
    return out


def row_hash(row: Mapping[str, Any], budget: BudgetName = "cpu") -> str:
    """The configuration hash the current code gives the run that a ``predict`` row of the results
    store describes: its model, dataset, scenario (and completion), seed, learning rate and
    weights, at ``budget`` (the record's, as a plan without overrides runs it).

    A row whose ``config_hash`` differs is *stale*: the code, a budget or a record changed since
    it was written, and re-running it would not give the same configuration.
    """
    scenario = str(row["scenario"])
    completion = row.get("completion")
    completion = str(completion) if scenario == "completed" and isinstance(completion, str) else "spackle"
    spec = RunSpec.make(str(row["model"]), dataset=str(row["dataset"]), budget=budget, seed=int(row["seed"]),
                        learning_rate=float(row["learning_rate"]), completion=completion,
                        pretrained=bool(row.get("pretrained", False) is True or row.get("pretrained") == "True"))
    config = replace(spec.config(), scenario=scenario, completion=completion)
    return config.hash(str(row["dataset"]), get_spec(str(row["dataset"])).n_genes)


def complete_for(adata: AnnData, method: str, seed: int = 0, device: str = "auto", iterations: int | None = None,
                 progress: bool = False, *, dataset: str) -> AnnData:
    """A copy of ``adata`` whose ``c_t_log1p`` (and ``c_t_deltas``) come from completion ``method``.

    The completion is the artefact :func:`spared_utils.completion.ensure` finds or makes for
    ``dataset``: trained methods at the book's CPU budget
    (:func:`spared_utils.completion.budget_options`, ``iterations`` overriding its length) with
    the predictor's seed and device.
    """
    return completion_stage.ensure(adata, dataset, method, seed=seed, device=device, iterations=iterations,
                                   progress=progress)


def budget_costs(model: str, budget: str = "cpu", **overrides) -> dict:
    """The flat cost options of ``model``'s ``budget`` with the overrides that are not ``None``
    (``"all"`` for a ``*_spots`` override means every spot, i.e. ``None`` in the config)."""
    spots = {k: v for k, v in overrides.items() if k.endswith("_spots")}
    costs = asdict(models.record(model).budget(
        budget, **{k: (_spots(v) if k in spots else v) for k, v in overrides.items()}))
    costs.update({k: None for k, v in spots.items() if v == "all"})
    return costs


def _spots(value: int | str | None) -> int | None:
    """A ``val_spots``/``eval_spots`` override for the record's budget (``"all"`` is set afterwards)."""
    return None if value is None or value == "all" else int(value)
