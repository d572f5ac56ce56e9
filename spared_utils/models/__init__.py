"""The predictor registry: one record per predictor, and ``build(name, n_genes)`` → a torch module.

Each predictor of the benchmark has one :class:`PredictorRecord` in :data:`RECORDS` (after
timm's ``@register_model``), and the record is everything the engine and the book know about it:
its name, the paper's display name, the builder, what it reads (``kind``), its
:class:`~spared_utils.models.task.Task` (how a run reads a batch, trains and predicts), an
optional setup hook (a model it needs trained first: SEPAL's stage 1), its trainable parameters
at 32 and 128 genes, two budgets — the CPU default every chapter, benchmark and table reads, and
the paper's — and its chapter with that chapter's own prose. Nothing else in the package names a
predictor.

One file per family, the architecture beside its task: :mod:`~spared_utils.models.encoders`
(ShuffleNet, ViT-B, ViT-B+Δ, STNet; :class:`~spared_utils.models.encoders.PatchTask`),
:mod:`~spared_utils.models.slide` (HisToGene, Hist2ST), :mod:`~spared_utils.models.egn`,
:mod:`~spared_utils.models.eggn` (with the exemplar bank they share,
:mod:`~spared_utils.models.exemplar`), :mod:`~spared_utils.models.contrastive` (BLEEP),
:mod:`~spared_utils.models.sepal`, :mod:`~spared_utils.models.probe`. What every task reads is
:mod:`~spared_utils.models.data`; frozen features are cached by :mod:`~spared_utils.models.features`.
Adding a predictor = one builder, one task, one record in :data:`RECORDS` and one prose file
(CONTRIBUTING says how).

``pretrained=True`` loads ImageNet weights (torchvision's through torch.hub's cache,
``TORCH_HOME``; timm's through the Hugging Face cache, ``HF_HOME``; else downloaded). Whatever
stops it (no network, a gated model without access, a file that does not fit) raises
:class:`PretrainedWeightsUnavailable`, whose one message names the model and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from torch import nn

from ..training import count_parameters
from . import contrastive, data, egn, eggn, encoders, exemplar, features, probe, sepal, slide, task
from .encoders import PatchRegressor, PatchTask, PretrainedWeightsUnavailable, dihedral_views
from .task import SetupContext, SetupRun, Task

#: What a predictor reads: one spot's patch, a whole slide, a spot graph, a retrieval bank of
#: training spots, or frozen features fitted in closed form (no training loop).
Kind = Literal["patch", "slide", "graph", "retrieval", "probe"]
KINDS: tuple[str, ...] = get_args(Kind)
#: A predictor's two budgets: the CPU default of the chapters, or the paper's protocol.
BudgetName = Literal["cpu", "paper"]
BUDGETS: tuple[str, ...] = get_args(BudgetName)


@dataclass(frozen=True)
class Budget:
    """What one training run costs: ``iterations`` × ``batch_size`` patches at ``learning_rate``.

    ``val_spots`` validation spots are predicted every ``eval_every`` iterations (checkpoint
    selection) and ``eval_spots`` per split at the end (``None``: every spot, as the paper).
    """

    iterations: int
    batch_size: int
    learning_rate: float
    eval_every: int
    val_spots: int | None = None
    eval_spots: int | None = None
    #: training spots read (a fixed random subset; the bank of retrieval models); None: all
    train_spots: int | None = None


#: The paper's protocol for every predictor: 1,000 iterations × batch 256, every spot scored
#: (its learning rate is searched per dataset; 1e-3 is the grid's middle).
PAPER_BUDGET = Budget(iterations=1000, batch_size=256, learning_rate=1e-3, eval_every=10)


#: Patch side (px) the CPU defaults read: the stored 224 px patches resized to 112 cost the
#: patch encoders 3–4× fewer operations (the paper reads 224; ``budget="paper"`` keeps it).
CPU_INPUT_SIZE = 112
#: The CPU options of the patch encoders trained from random weights: 112 px, and a head that
#: starts at each gene's training mean (zero weights), so the few CPU steps are not spent on
#: learning the ≈ 8 log-unit offset of the targets (the paper's head starts at PyTorch's init).
CPU_PATCH_OPTIONS: tuple[tuple[str, Any], ...] = (("input_size", CPU_INPUT_SIZE), ("mean_init_head", True))


@dataclass(frozen=True)
class PredictorRecord:
    """Everything the book knows about one predictor."""

    name: str
    display_name: str
    builder: Callable[..., nn.Module]
    kind: Kind
    #: trainable parameters at 32 and 128 genes (checked against the built model by the tests)
    n_params_32: int
    n_params_128: int
    #: the chapter's default on a CPU (minutes, from random weights, on the embedded dataset)
    cpu: Budget
    paper: Budget = PAPER_BUDGET
    #: builder options the chapter exposes as parameters: name → what it means
    options: Mapping[str, str] = field(default_factory=dict)
    #: builder options the CPU budget sets (``(name, value)`` pairs; the paper budget keeps the defaults)
    cpu_options: tuple[tuple[str, Any], ...] = ()
    #: extra inputs beyond a batch of patches (documentation: what the model's forward takes)
    inputs: str = "patches (B, 3, H, W) uint8"
    #: how a run reads a batch, trains and predicts (a :class:`~spared_utils.models.task.Task` subclass)
    task: type[Task] = PatchTask
    #: a model needed before this one trains: ``setup(SetupContext) -> dict`` of keyword
    #: arguments for the task (SEPAL: its frozen stage 1)
    setup: Callable[[SetupContext], dict] | None = None
    #: the setup options of a chapter run: ``setup_options(costs) -> dict``, ``costs(name)``
    #: giving another predictor's flat cost options at the chapter's budget and overrides
    setup_options: Callable[[Callable[[str], dict]], dict] | None = None
    #: the chapter (file stem under ``chapters/``) and its own prose (path under the project root)
    chapter: str = ""
    prose: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"predictor {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.prose:
            object.__setattr__(self, "prose", f"chapters/predictors/{self.name}.md")

    def budget(self, which: BudgetName = "cpu", **overrides) -> Budget:
        """The ``"cpu"`` or ``"paper"`` budget, with fields whose override is not ``None`` changed."""
        if which not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {which!r}")
        base = self.cpu if which == "cpu" else self.paper
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


RECORDS: dict[str, PredictorRecord] = {
    r.name: r
    for r in (
        PredictorRecord("shufflenet", "ShuffleNet", encoders.shufflenet, "patch", 374_592, 472_992,
                        cpu=Budget(200, 32, 1e-3, eval_every=25, val_spots=200), options={"width": "ShuffleNetV2 channel multiplier (SpaRED: 0.5)"},
                        cpu_options=CPU_PATCH_OPTIONS,
                        chapter="10_shufflenet"),
        PredictorRecord("vit_b", "ViT-B", encoders.vit_b, "patch", 85_823_264, 85_897_088,
                        cpu=Budget(30, 8, 1e-4, eval_every=10, val_spots=32, eval_spots=60),
                        cpu_options=CPU_PATCH_OPTIONS,
                        chapter="11_vit_b"),
        PredictorRecord("vit_b_delta", "ViT-B+Δ", encoders.vit_b_delta, "patch", 85_823_264, 85_897_088,
                        cpu=Budget(30, 8, 1e-4, eval_every=10, val_spots=32, eval_spots=60),
                        cpu_options=(("input_size", CPU_INPUT_SIZE),),
                        chapter="12_vit_b_delta"),
        PredictorRecord("stnet", "STNet", encoders.stnet, "patch", 6_986_656, 7_085_056,
                        cpu=Budget(60, 16, 1e-3, eval_every=20, val_spots=24, eval_spots=80),
                        options={"dihedral_average": "average the prediction over the 8 symmetries of the patch (ST-Net)"},
                        cpu_options=(("input_size", CPU_INPUT_SIZE),),
                        chapter="13_stnet"),
        # Slide models: batch_size = neighbouring spots of ONE slide per step; every spot scored.
        PredictorRecord("histogene", "HisToGene", slide.histogene, "slide", 105_956_384, 106_054_784,
                        cpu=Budget(300, 128, 3e-4, eval_every=25),
                        options={"patch_size": "px each spot's patch is read at (paper: 112); at most the dataset's"},
                        cpu_options=(("patch_size", 32), ("dim", 512), ("depth", 4), ("heads", 8), ("mlp_dim", 1024)),
                        paper=replace(PAPER_BUDGET, batch_size=10_000),
                        inputs="patches (N, 3, H, W) and array rows, cols (N,) of the N spots of one slide",
                        chapter="14_histogene", task=slide.SlideTask),
        PredictorRecord("hist2st", "Hist2ST", slide.hist2st, "slide", 71_633_380, 71_731_780,
                        cpu=Budget(300, 128, 3e-4, eval_every=25),
                        options={"patch_size": "px each spot's patch is read at (paper: 112); at most the dataset's"},
                        cpu_options=(("patch_size", 56), ("depth", 4), ("heads", 4)),
                        paper=replace(PAPER_BUDGET, batch_size=10_000),
                        inputs="patches (N, 3, H, W), array rows, cols (N,) of one slide (+ its spot graph)",
                        chapter="15_hist2st", task=slide.SlideTask),
        PredictorRecord("egn", "EGN", egn.egn, "retrieval", 130_096_160, 130_489_472,
                        cpu=Budget(60, 16, 1e-4, eval_every=15, val_spots=20, eval_spots=50, train_spots=300),
                        cpu_options=(("dim", 256), ("depth", 4), ("mlp_dim", 1024), ("heads", 4), ("image_size", 128)),
                        inputs="patches (B, 3, H, W), their frozen ResNet-50 features (B, 2048), their k exemplars' "
                               "features (B, k, 2048) and expression (B, k, n_genes) from a bank of training spots",
                        chapter="16_egn", task=egn.ExemplarTask),
        PredictorRecord("eggn", "EGGN", eggn.eggn, "graph", 10_941_985, 11_089_537,
                        cpu=Budget(120, 128, 1e-3, eval_every=20),
                        paper=replace(PAPER_BUDGET, batch_size=10_000),
                        inputs="frozen ResNet-18 features (N, 512) and array rows, cols of one slide's spots, "
                               "their k exemplars' features and expression",
                        chapter="17_eggn", task=eggn.ExemplarGraphTask),
        PredictorRecord("bleep", "BLEEP", contrastive.bleep, "retrieval", 24_173_632, 24_198_208,
                        cpu=Budget(60, 32, 1e-3, eval_every=15, val_spots=48, eval_spots=96),
                        cpu_options=(("backbone", "resnet18"), ("input_size", CPU_INPUT_SIZE), ("top_k", 200)),
                        inputs="patches (B, 3, H, W) (+ expression (B, n_genes) in training); predicts from a "
                               "bank of training spots",
                        chapter="18_bleep", task=contrastive.ContrastiveTask),
        PredictorRecord("sepal", "SEPAL", sepal.sepal, "graph", 955_554, 967_938,
                        cpu=Budget(100, 24, 1e-4, eval_every=20, val_spots=48, eval_spots=100, train_spots=300),
                        cpu_options=(("n_hops", 1),),
                        inputs="per centre spot: its stage-1 ViT-B+Δ prediction, the frozen stage-1 embeddings "
                               "and array offsets of its n-hop neighbourhood",
                        chapter="19_sepal", task=sepal.SepalTask, setup=sepal.setup_stage1, setup_options=sepal.stage1_options),
        PredictorRecord("linear_probe", "Linear probe", probe.linear_probe, "probe", 0, 0,
                        cpu=Budget(1, 1, 1.0, eval_every=1, val_spots=100, eval_spots=200, train_spots=400),
                        paper=replace(PAPER_BUDGET, iterations=1, batch_size=1, eval_every=1),
                        options={"encoder": "frozen encoder: a timm name, or uni, uni2-h, h-optimus-0, "
                                            "h-optimus-1, virchow2 (gated foundation models)",
                                 "alpha": 'ridge penalty, or "cv": chosen by cross-validation'},
                        cpu_options=(("alpha", "cv"),),
                        inputs="patches (B, 3, H, W); fitted in closed form (fit(features, targets, mask))",
                        chapter="20_linear_probe", task=probe.ProbeTask),
    )
}

#: Every predictor name (the order chapters and figures use).
NAMES: tuple[str, ...] = tuple(RECORDS)


def record(name: str) -> PredictorRecord:
    """The record of predictor ``name`` (an unknown name raises with the known ones)."""
    if name not in RECORDS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(NAMES)}")
    return RECORDS[name]


def build(name: str, n_genes: int, pretrained: bool = False, **options) -> nn.Module:
    """Build predictor ``name`` with ``n_genes`` outputs.

    Parameters
    ----------
    name
        One of :data:`NAMES`.
    n_genes
        Number of genes predicted (outputs of the head).
    pretrained
        Start the backbone from ImageNet weights (needs the torch.hub cache or internet).
    **options
        Builder-specific options, e.g. ``width=1.0`` for ``shufflenet`` or
        ``dihedral_average=False`` for ``stnet``.
    """
    builder = record(name).builder
    if int(n_genes) < 1:
        raise ValueError(f"n_genes must be a positive number of genes, got {n_genes}")
    try:
        return builder(int(n_genes), pretrained=bool(pretrained), **options)
    except TypeError as err:
        if options:
            raise TypeError(f"predictor {name!r} does not accept option(s) {sorted(options)}: {err}") from err
        raise


def display_name(name: str) -> str:
    """The paper's name for predictor ``name`` (``vit_b_delta`` → ``ViT-B+Δ``)."""
    return RECORDS[name].display_name if name in RECORDS else name


__all__ = [
    "BUDGETS", "KINDS", "NAMES", "PAPER_BUDGET", "RECORDS", "Budget", "BudgetName", "Kind", "PatchRegressor",
    "PatchTask", "PredictorRecord", "SetupContext", "SetupRun", "Task", "contrastive", "data", "egn", "eggn",
    "encoders", "exemplar", "features", "probe", "sepal", "slide", "task",
    "PretrainedWeightsUnavailable", "build", "count_parameters", "dihedral_views", "display_name", "record",
]
