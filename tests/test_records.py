"""Every predictor is one record: it builds, trains, predicts, round-trips and has a chapter.

Parametrised over :data:`spared_utils.models.RECORDS` (as timm's ``tests/test_models.py`` is over
its registry), so a new record is tested without a new test; the last tests add a twelfth
predictor at run time to show that one builder, one task, one record and one prose file are all
a predictor needs.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import jupytext
import numpy as np
import pytest
import torch
from torch import nn

from spared_utils import models, patches, predict, run, template
from spared_utils.models import Budget, PredictorRecord
from spared_utils.models.encoders import PatchTask

from .test_predict import _toy_adata

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(models.RECORDS)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Two training slides, a validation and a test slide (exemplar rules need two training slides)."""
    adata = _toy_adata(n_per_slide=12)
    adata.obs["split"] = adata.obs["slide_id"].map({"S1": "train", "S2": "train", "S3": "test"}).astype(str)
    adata.obs.loc[adata.obs_names[adata.obs["slide_id"] == "S3"][:6], "split"] = "val"
    path = patches.extract_patches(adata, tmp_path_factory.mktemp("records") / "patches", patch_size=64,
                                   progress=False)
    return adata, patches.PatchStore(path)


def _two_step_config(record: PredictorRecord, **changes) -> predict.PredictorConfig:
    """The record's CPU options (its architecture as the chapters train it) with two tiny steps."""
    flat = dict(model=record.name, scenario="masked", iterations=2, batch_size=6, eval_every=1, eval_batch_size=8, val_spots=4,
                eval_spots=5, train_spots=None if record.kind != "retrieval" else 16, progress=False, device="cpu",
                model_options=dict(record.cpu_options))
    if record.setup_options is not None:  # a model trained first: two steps too
        flat["setup"] = record.setup_options(lambda name: {"iterations": 2, "batch_size": 4, "eval_every": 1,
                                                          "val_spots": 2, "eval_spots": 2})
    return predict.PredictorConfig.make(**{**flat, **changes})


@pytest.mark.parametrize("name", NAMES)
def test_record_builds_at_32_and_128_genes_with_its_parameter_counts_and_budgets(name):
    record = models.record(name)
    assert record.kind in models.KINDS and record.display_name and issubclass(record.task, models.Task)
    assert (ROOT / record.prose).is_file(), f"{record.prose} is missing"
    for n_genes, expected in ((32, record.n_params_32), (128, record.n_params_128)):
        built = models.build(name, n_genes)
        assert models.count_parameters(built) == expected, (name, n_genes)
    cpu, paper = record.budget("cpu"), record.budget("paper")
    if record.task.closed_form:  # one fit, no optimiser steps
        assert cpu.iterations == paper.iterations == 1 and paper.train_spots is None
    elif record.task.per_slide:  # one whole slide per step (SpaRED's largest: ~5,000 spots)
        assert cpu.iterations < paper.iterations == 1000 and paper.batch_size >= 5000
    else:
        assert cpu.iterations < paper.iterations == 1000 and paper.batch_size == 256
    assert paper.val_spots is paper.eval_spots is paper.train_spots is None  # the paper scores every spot
    assert record.budget("cpu", iterations=7, batch_size=None).iterations == 7  # None keeps the record's


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_record_trains_two_steps_predicts_and_its_checkpoint_round_trips(name, toy, tmp_path):
    record = models.record(name)
    adata, store = toy
    data = predict.prediction_data(adata, store, "masked")
    run_ = predict.train_predictor(data, _two_step_config(record), dataset="toy", out_dir=tmp_path)
    assert type(run_.task) is record.task
    assert len(run_.history) == (1 if record.task.closed_form else 2)
    held = run_.rows["test"]
    pred = run_.predictions["test"]
    assert pred.shape == (len(held), data.n_genes) and np.isfinite(pred).all()

    # the best weights, written and read back into a fresh build, predict the same numbers
    fresh = predict.build_for_data(run_.config, data)
    if record.task.closed_form:
        fresh = type(run_.model).load(run_.model.save(tmp_path / "probe.joblib"))
    else:
        best = run_.train.checkpoint
        assert best is not None and best.is_file()
        fresh.load_state_dict(torch.load(best, map_location="cpu", weights_only=True))
    task = predict.make_task(run_.config, data, fresh, **predict.run_setup(data, run_.config, "toy", tmp_path))
    np.testing.assert_allclose(task.predict(fresh, held), pred, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_record_chapter_renders_from_the_template_with_the_records_parameters(name):
    record = models.record(name)
    nb = jupytext.reads(template.chapter_text(record), fmt="py:percent")
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    scope: dict = {}
    exec(params.source, {}, scope)
    assert set(predict.COST_FIELDS) | set(record.options) <= set(scope)
    assert all(scope[k] is None for k in (*predict.COST_FIELDS, *record.options)), "None: the budget's"
    # the comments quote the record's budgets, so no budget is typed twice
    assert f"CPU {record.cpu.iterations:,}" in params.source
    assert sum(f'RunSpec.from_parameters("{record.name}", globals())' in c.source for c in nb.cells) == 1
    writes = nb.cells[0].source.split("**What it writes:**")[1].split("**")[0]
    assert ("checkpoints" in writes) != record.task.closed_form, "a closed-form fit writes no checkpoint"
    curves = any("learning_curves" in c.source for c in nb.cells)
    assert curves != record.task.closed_form, "learning curves exactly where a training loop runs"
    spec = predict.RunSpec.from_parameters(name, scope)
    assert spec.model == name and spec.costs == {} and spec.model_options == {}


def test_committed_predictor_chapters_are_what_the_template_makes():
    changed = template.write_chapters(ROOT, check=True)
    assert changed == [], f"regenerate with `make chapters`: {[p.name for p in changed]}"


def test_the_prediction_stage_names_no_predictor():
    """Nothing in ``spared_utils/predict`` is about one predictor: the records say it all."""
    found = []
    for path in (ROOT / "spared_utils" / "predict").glob("*.py"):
        text = path.read_text()
        found += [(path.name, n) for n in (*NAMES, "SEPAL", "stage1") if re.search(rf"\b{re.escape(n)}\b", text)]
    assert found == []


def test_run_spec_reads_a_chapters_parameters_and_keeps_the_budget_where_none():
    params = {"dataset": "synthetic_tiny", "seed": 3, "iterations": 7, "eval_spots": "all", "batch_size": None,
              "width": None, "dihedral_average": False, "unrelated": 1, "scenario": "both"}
    spec = predict.RunSpec.from_parameters("shufflenet", params)
    assert spec.costs == {"iterations": 7, "eval_spots": "all"} and spec.model_options == {}
    assert spec.scenario == ("raw", "completed") and spec.seed == 3
    config = spec.config()
    cpu = models.record("shufflenet").cpu
    assert (config.train.iterations, config.train.batch_size, config.eval_spots) == (7, cpu.batch_size, None)
    assert config.model_options == dict(models.record("shufflenet").cpu_options)
    assert predict.RunSpec.make("shufflenet", width=1.0).config().model_options["width"] == 1.0
    with pytest.raises(TypeError, match="unknown predictor option"):
        predict.RunSpec.make("shufflenet", warp_speed=9).config()
    with pytest.raises(ValueError, match="budget"):
        predict.RunSpec("shufflenet", budget="gpu")


def test_a_setup_hook_trains_its_model_at_the_chapters_budget_and_overrides():
    """SEPAL's stage 1 is the run chapter 12 would make with the same parameters (so it is reused)."""
    spec = predict.RunSpec.make("sepal", iterations=5, eval_spots=9, train_spots=11, learning_rate=0.5)
    stage1 = spec.config().setup["stage1"]
    other = predict.RunSpec.make(models.sepal.STAGE1_MODEL, iterations=5, eval_spots=9).config()
    for key in ("iterations", "batch_size", "eval_every", "val_spots", "eval_spots"):
        assert stage1[key] == (getattr(other.train, key) if hasattr(other.train, key) else getattr(other, key))
    assert stage1["train_spots"] == models.record(models.sepal.STAGE1_MODEL).cpu.train_spots  # not overridden
    assert stage1["learning_rate"] == models.record(models.sepal.STAGE1_MODEL).cpu.learning_rate


# -- a twelfth predictor, added at run time ---------------------------------------------------


class MeanColour(nn.Module):
    """A dummy predictor: expression as a linear function of a patch's mean colour."""

    def __init__(self, n_genes: int):
        super().__init__()
        self.head = nn.Linear(3, n_genes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.float().mean((2, 3)) / 255.0)


def mean_colour(n_genes: int, pretrained: bool = False) -> nn.Module:
    return MeanColour(n_genes)


class MeanColourTask(PatchTask):
    """Its task: a patch task that counts its training steps."""

    steps = 0

    def loss(self, net, batch):
        type(self).steps += 1
        return super().loss(net, batch)


PROSE = """# Mean colour: a twelfth predictor

**What it shows:** that a predictor needs a builder, a task, a record and this file.
**What it needs:** a curated dataset with patches.

+++ {"place": "end"}

## The colour head

```{code-cell} ipython3
notes.append(f"- Its head has {chapter.runs[shown].n_params} parameters.")
```
"""


def test_a_twelfth_predictor_needs_a_builder_a_task_a_record_and_a_prose_file(toy, tmp_path, monkeypatch):
    record = PredictorRecord("mean_colour", "Mean colour", mean_colour, "patch", 3 * 32 + 32, 3 * 128 + 128,
                             cpu=Budget(3, 6, 1e-2, eval_every=1, val_spots=4, eval_spots=5),
                             task=MeanColourTask, chapter="21_mean_colour")
    monkeypatch.setitem(models.RECORDS, record.name, record)
    monkeypatch.setattr(models, "NAMES", (*models.NAMES, record.name))

    # the engine trains and scores it, with no line of the package about it
    adata, store = toy
    data = predict.prediction_data(adata, store, "masked")
    config = predict.RunSpec.make("mean_colour", dataset="toy", costs={"eval_every": 1}, device="cpu",
                                  options={"progress": False}).config()
    done = predict.train_predictor(data, replace(config, scenario="masked"), dataset="toy", out_dir=tmp_path)
    assert MeanColourTask.steps == record.cpu.iterations and done.n_params == 3 * data.n_genes + data.n_genes
    assert set(done.metrics["split"]) == {"val", "test"}

    # its chapter comes from the template, its parameters from the record
    root = tmp_path / "book"
    for rel in ("_config.yml", str(template.TEMPLATE)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, root / rel)
    (root / record.prose).parent.mkdir(parents=True)
    (root / record.prose).write_text(PROSE)
    assert template.write_chapters(root, names=["mean_colour"]) == [root / "chapters" / "21_mean_colour.py",
                                                                   root / "chapters" / "21_mean_colour.ipynb"]
    params = run.chapter_parameters(root / "chapters" / "21_mean_colour.py")
    assert params["dataset"] == "synthetic" and params["iterations"] is None
    text = (root / "chapters" / "21_mean_colour.py").read_text()
    assert 'RunSpec.from_parameters("mean_colour", globals())' in text and "## The colour head" in text


def test_the_template_check_ignores_which_jupytext_version_wrote_a_chapter(tmp_path):
    """A fresh environment may install a newer jupytext, which writes its version in the header;
    the chapter is the same, and only a change below the header counts."""
    record = models.record("shufflenet")
    for rel in ("_config.yml", str(template.TEMPLATE), record.prose):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    py = tmp_path / "chapters" / f"{record.chapter}.py"
    assert template.write_chapters(tmp_path, names=["shufflenet"]) == [py, py.with_suffix(".ipynb")]
    text = py.read_text()
    assert "jupytext_version:" in text
    py.write_text(re.sub(r"jupytext_version: \S+", "jupytext_version: 99.0.0", text))
    assert template.write_chapters(tmp_path, check=True, names=["shufflenet"]) == []
    py.write_text(text.replace("# %% [markdown]", "# %% [markdown]\n# an edit", 1))
    assert template.write_chapters(tmp_path, check=True, names=["shufflenet"]) == [py]
