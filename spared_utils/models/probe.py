"""Linear probe of a frozen patch encoder (HEST-Benchmark protocol): features → scaler → PCA → ridge.

Beyond the SpaRED paper: the protocol the HEST-Benchmark uses to compare pathology foundation
models on expression prediction (Jaume et al., "HEST-1k: A Dataset for Spatial Transcriptomics
and Histology Image Analysis", NeurIPS 2024 Datasets & Benchmarks; official code
github.com/mahmoodlab/HEST, ``src/hest/bench/benchmark.py`` and ``src/hest/bench/trainer.py``).
Nothing is trained by gradient descent:

1. a frozen encoder maps each patch to one global feature vector, computed once
   (:meth:`LinearProbe.encode`);
2. ``sklearn`` ``StandardScaler`` then ``PCA(n_components=256)``, both fitted on the training
   spots (HEST: ``Pipeline([StandardScaler(), PCA(latent_dim=256, random_state=seed)])``);
3. ``sklearn`` ``Ridge(solver="lsqr", max_iter=1000)`` from the PCA features to all genes, with
   HEST's rule ``alpha = 100 / (n_features · n_genes)`` where ``n_features`` is the width of the
   ridge's input, i.e. the number of PCA components (HEST ``train_test_reg``).

Encoders: any timm model name, so a pathology foundation model can be probed where its weights
are available. Five are known by a short name that sets their model card's ``timm`` arguments
(:data:`FOUNDATION_MODELS`): ``"uni"`` (``hf-hub:MahmoodLab/uni`` with ``init_values=1e-5,
dynamic_img_size=True``), ``"uni2-h"``, ``"h-optimus-0"``, ``"h-optimus-1"`` and ``"virchow2"``
(class token ⊕ mean patch token, 2,560 features); all are gated on Hugging Face. The
features are otherwise the model's global pooled output (``num_classes=0``: the class token of a ViT, the
average-pooled last stage of a CNN). The default ``"resnet50"`` is HEST's ResNet-50 baseline:
timm's ``resnet50.tv_in1k`` (torchvision ImageNet weights) truncated after its third stage
(``features_only=True, out_indices=[3]``) and average-pooled, 1024 features. Patches are
normalised with the encoder's own mean/std from timm's data config (ImageNet for ResNet-50 and UNI).

Deviations from HEST, and why:

* **Intercept.** HEST fits the ridge with ``fit_intercept=False``. Its PCA features have zero mean
  on the training spots, so predictions then average 0 instead of the mean expression: harmless
  for HEST's Pearson correlation, not for this book's MSE on log2(TPM+1). Here
  ``fit_intercept=True`` by default; ``False`` gives HEST's fit.
* **Penalty.** ``alpha="cv"`` (the book's CPU default, where the encoder has random weights)
  chooses the ridge penalty by leave-one-out error instead of HEST's fixed
  ``100 / (256 · n_genes)``: with features of an untrained network and a few hundred training
  spots HEST's near-zero penalty is an almost unregularised least-squares fit on 256 components
  and extrapolates wildly on held-out spots (chapter 20 measures it).
* **PCA capped.** ``n_components`` is lowered to ``min(n_components, n_samples, n_features)`` (HEST
  fails with fewer than 256 training spots or features).
* **Missing values.** HEST's targets are complete. With ``mask`` (True = a real value) each gene is
  fitted on its own observed spots (genes observed everywhere share one fit); scaler and PCA use
  every spot, as the features are always present.
* No resizing: patches are encoded at the size they come in (HEST also feeds its 224 px patches as is).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .encoders import ImageNormalize, PretrainedWeightsUnavailable, _reachable, state_dict_mismatch
from ..training import TrainResult
from .features import FrozenCache, shared_cache
from .task import Task

#: HEST's ResNet-50 baseline: timm weights name and the stage its features are taken after.
HEST_RESNET50 = ("resnet50.tv_in1k", 3)


#: Penalties tried by ``alpha="cv"`` (leave-one-out on the training spots).
CV_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 17))


def hest_alpha(n_features: int, n_genes: int) -> float:
    """HEST's ridge penalty: ``100 / (n_features · n_genes)`` (``n_features`` = PCA components)."""
    if n_features < 1 or n_genes < 1:
        raise ValueError(f"n_features and n_genes must be positive, got {n_features} and {n_genes}")
    return 100.0 / (n_features * n_genes)


class TimmFeatures(nn.Module):
    """Normalisation + a timm model returning one global feature vector per patch.

    ``stage=None``: the model built with ``num_classes=0`` (its pooled pre-logits features);
    ``stage=k``: the model built with ``features_only=True, out_indices=[k]``, average-pooled;
    ``pool="cls+mean"``: a ViT returning its tokens (``global_pool=""``), read as the class token
    concatenated with the mean of its patch tokens (after the class and register tokens,
    ``model.num_prefix_tokens``): Virchow2's embedding, twice the model's width.
    """

    def __init__(self, model: nn.Module, n_features: int, mean, std, stage: int | None = None,
                 pool: str = "model"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.normalize = ImageNormalize(mean, std)
        self.model = model
        self.n_features = int(n_features)
        self.stage = stage
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.normalize(x))
        if self.stage is not None:
            out = out[0] if isinstance(out, (list, tuple)) else out
            out = out.mean(dim=(-2, -1))
        elif self.pool == "cls+mean":
            out = torch.cat([out[:, 0], out[:, self.model.num_prefix_tokens:].mean(dim=1)], dim=-1)
        return out


#: How :class:`TimmFeatures` turns a model's output into one vector per patch.
POOLS = ("model", "cls+mean")


@dataclass(frozen=True)
class FoundationModel:
    """A pathology foundation model for the probe, built the way its model card says.

    ``timm_kwargs`` are the keyword arguments of ``timm.create_model`` that the card passes (a
    class is written as its dotted name and imported when the model is built); ``n_features``
    is the width of the vector the probe reads; ``pool`` says how it is read (see
    :class:`TimmFeatures`). All five are gated on Hugging Face: request access on the card, then
    log in (``huggingface-cli login`` or ``HF_TOKEN``).
    """

    name: str
    timm_kwargs: Mapping[str, Any]
    n_features: int
    card: str
    pool: str = "model"

    def kwargs(self) -> dict:
        """``timm_kwargs`` with dotted class names imported."""
        return {k: _import_dotted(v) if isinstance(v, str) and v.startswith(("timm.", "torch.")) else v
                for k, v in self.timm_kwargs.items()}


def _import_dotted(path: str):
    import importlib

    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


#: The foundation models the probe knows by a short name (``linear_probe(encoder="uni")``), with
#: the ``timm`` arguments of their model cards (huggingface.co/<repository>).
FOUNDATION_MODELS: dict[str, FoundationModel] = {
    # ViT-L/16 (Chen et al. 2024, Nature Medicine); card: init_values=1e-5, dynamic_img_size=True
    "uni": FoundationModel("hf-hub:MahmoodLab/uni", {"init_values": 1e-5, "dynamic_img_size": True}, 1024,
                           "https://huggingface.co/MahmoodLab/UNI"),
    # ViT-H/14 with 8 register tokens and a SwiGLU MLP; the card spells the whole architecture out
    "uni2-h": FoundationModel(
        "hf-hub:MahmoodLab/UNI2-h",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
         "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU", "reg_tokens": 8,
         "dynamic_img_size": True},
        1536, "https://huggingface.co/MahmoodLab/UNI2-h"),
    # ViT-g/14 with 4 register tokens (the repository's config.json names the architecture)
    "h-optimus-0": FoundationModel("hf-hub:bioptimus/H-optimus-0", {"init_values": 1e-5, "dynamic_img_size": False},
                                   1536, "https://huggingface.co/bioptimus/H-optimus-0"),
    "h-optimus-1": FoundationModel("hf-hub:bioptimus/H-optimus-1", {"init_values": 1e-5, "dynamic_img_size": False},
                                   1536, "https://huggingface.co/bioptimus/H-optimus-1"),
    # ViT-H/14, 4 register tokens; the card's embedding: class token ⊕ mean of the patch tokens
    "virchow2": FoundationModel("hf-hub:paige-ai/Virchow2",
                                {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"},
                                2560, "https://huggingface.co/paige-ai/Virchow2", pool="cls+mean"),
}


# ---------------------------------------------------------------------------------------------
# timm weights from the Hugging Face Hub: cached or downloaded, every failure in one message
# ---------------------------------------------------------------------------------------------

#: Files timm reads a model's weights from in a Hub repository (the first one present).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _hf_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hf_repo(name: str) -> str | None:
    """The Hugging Face repository timm reads ``name``'s weights from (None: another source)."""
    if name.startswith(("hf-hub:", "hf_hub:")):
        return name.split(":", 1)[1].split("@")[0]
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else None


def _repo_folders(repo: str) -> tuple[Path, Path]:
    """The cache folder of ``repo`` (huggingface_hub's layout) and its folder of lock files."""
    folder = f"models--{repo.replace('/', '--')}"
    return _hf_cache_dir() / folder, _hf_cache_dir() / ".locks" / folder


def _hf_cached(repo: str) -> bool:
    """Whether a snapshot of ``repo`` in the cache holds a weights file."""
    snapshots = _repo_folders(repo)[0] / "snapshots"
    return snapshots.is_dir() and any((snap / f).is_file() for snap in snapshots.iterdir() for f in HF_WEIGHT_FILES)


def _offline_reason(name: str) -> str | None:
    """Why ``name``'s weights surely cannot be loaded (not cached, source unreachable), else None.

    Checked before timm tries, so that an offline machine fails at once instead of after the
    Hugging Face client's retries (five, about 23 s a file).
    """
    from timm.models import get_pretrained_cfg

    repo = hf_repo(name)
    if repo:
        if _hf_cached(repo):
            return None
        if _hf_offline():
            return f"{repo} is not in the Hugging Face cache ({_hf_cache_dir()}) and HF_HUB_OFFLINE is set"
        if not _reachable(_hf_endpoint()):
            return f"{repo} is not in the Hugging Face cache ({_hf_cache_dir()}) and {_hf_endpoint()} cannot be reached"
        return None
    cfg = get_pretrained_cfg(name)
    url = cfg.url if cfg is not None else None
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
        if not cached.is_file() and not _reachable(url):
            return f"{cached} is not cached and {url} cannot be reached"
    return None


def _weights_message(name: str, detail: str) -> str:
    return (
        f"pretrained=True needs the weights of timm model {name!r}, but {detail}. Either pass "
        "pretrained=False (random initialisation, as the offline demo does), or make the weights "
        "available: connect to the internet (and, for a gated Hugging Face model such as UNI or "
        "H-optimus-0, request access on its model page and log in with `huggingface-cli login` or "
        "HF_TOKEN), or set HF_HOME (or HF_HUB_CACHE) / TORCH_HOME to a cache that holds them."
    )


def _failure_message(name: str, repo: str | None, kwargs: Mapping, err: Exception) -> str:
    """One message for a failed ``timm.create_model``: which model, what happened, what to do."""
    from huggingface_hub import errors as hf_errors

    page = f"{_hf_endpoint()}/{repo}" if repo else None
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, hf_errors.GatedRepoError):
        if status == 403:
            return (f"{name!r}: the Hugging Face Hub refused {repo} (403): the token in use has not been granted "
                    f"access to this gated model. Request access on {page} with that account and wait for "
                    f"the approval, or set HF_TOKEN to a token of an account that has access.")
        return (f"{name!r}: {repo} is a gated model and the request carried no valid token ({status}). "
                f"Request access on {page}, then log in with `huggingface-cli login` (or set HF_TOKEN to "
                f"a token of that account).")
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return (f"{name!r}: {_hf_endpoint()} shows no repository {repo} to this request ({status}): it does not "
                f"exist, or it is gated or private. Check the name; for a gated model request access on "
                f"{page} and log in with `huggingface-cli login` (or set HF_TOKEN).")
    if isinstance(err, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)) or (
            isinstance(err, OSError) and not isinstance(err, hf_errors.HfHubHTTPError)):
        where = f"{repo} is not complete in the Hugging Face cache ({_hf_cache_dir()})" if repo else "they are not cached"
        return _weights_message(name, f"{where} and loading them failed ({type(err).__name__}: "
                                      f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})")
    text = str(err)
    if isinstance(err, RuntimeError) and any(k in text for k in ("size mismatch", "Missing key", "Unexpected key")):
        detail = state_dict_mismatch(text)
        folder = _repo_folders(repo)[0] if repo else Path(torch.hub.get_dir()) / "checkpoints"
        args = ", ".join(f"{k}={getattr(v, '__name__', v)!r}" for k, v in kwargs.items()) or "none"
        return (f"{name!r}: the pretrained weights (cached under {folder}) do not fit the model built with "
                f"the timm arguments {args} ({detail[:300]}). Pass the timm arguments its model card "
                f"gives (the probe sets them for the short names {', '.join(FOUNDATION_MODELS)}); if the "
                f"file is damaged, delete {folder} so that it is downloaded again, or set HF_HOME (or "
                f"HF_HUB_CACHE) to a cache that holds the right files.")
    return _weights_message(name, f"loading them failed ({type(err).__name__}: {text.strip()[:300]})")


def _files(*folders: Path) -> set[Path]:
    return {p for folder in folders if folder.is_dir() for p in folder.rglob("*")}


def _remove_partial(before: set[Path], *folders: Path) -> None:
    """Remove what a failed download added: unfinished files, lock files, empty folders."""
    added = sorted(_files(*folders) - before, key=lambda p: len(p.parts), reverse=True)
    for path in added:
        if path.is_file() and (path.name.endswith(".incomplete") or path.suffix == ".lock"):
            path.unlink(missing_ok=True)
    for path in added:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for folder in folders:
        if folder.is_dir() and folder not in before and not any(folder.iterdir()):
            folder.rmdir()


def load_timm(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=pretrained, **kwargs)``, every failure in one message.

    timm reads a registered model's weights (``resnet50.tv_in1k``) and an ``hf-hub:`` model's
    ``config.json`` (architecture, ``model_args``, ``pretrained_cfg`` with the input mean/std)
    and weights (``model.safetensors``, else ``pytorch_model.bin``) through ``huggingface_hub``,
    which keeps them in ``HF_HUB_CACHE`` (``$HF_HOME/hub``, ``models--<org>--<name>/snapshots/
    <commit>/``) and asks ``HF_ENDPOINT``. An ``hf-hub:`` model needs its ``config.json`` even
    with ``pretrained=False``.

    Raises
    ------
    PretrainedWeightsUnavailable
        Naming the model and what to do: not cached and no network (``HF_HUB_OFFLINE``, or the
        endpoint unreachable; checked before the client's retries), a gated model without access
        (401: log in; 403: request access), a repository the Hub does not show, or weights that do
        not fit the architecture built (other timm arguments than the model card's). What a
        failed download left in the cache (unfinished files, locks, empty folders) is removed.
    """
    import timm

    repo = hf_repo(name)
    from_hub = name.startswith(("hf-hub:", "hf_hub:"))
    if not pretrained and not from_hub:
        return timm.create_model(name, pretrained=False, **kwargs)
    reason = _offline_reason(name)
    if reason:
        raise PretrainedWeightsUnavailable(_weights_message(name, reason))
    folders = _repo_folders(repo) if repo else ()
    before = _files(*folders)
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub/HTTP/cache/state-dict errors come in many classes
        if folders:
            _remove_partial(before, *folders)
        if not pretrained and not from_hub:
            raise
        raise PretrainedWeightsUnavailable(_failure_message(name, repo, kwargs, err)) from err


def timm_features(name: str, pretrained: bool = False, stage: int | None = None, pool: str = "model",
                  **timm_kwargs) -> TimmFeatures:
    """Build a frozen-to-be timm feature extractor (see :class:`TimmFeatures`).

    Patches are normalised with the mean/std of the model's pretrained configuration (timm's
    registry, or an ``hf-hub:`` repository's ``config.json``).

    Raises
    ------
    ValueError
        For a name timm does not know (``hf-hub:`` names are passed through).
    PretrainedWeightsUnavailable
        When the weights (or an ``hf-hub:`` configuration) cannot be loaded: see :func:`load_timm`.
    """
    import timm

    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        raise ValueError(f"timm knows no model {name!r} (see timm.list_models())")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    kwargs = dict(timm_kwargs)
    if stage is not None:
        kwargs.update(features_only=True, out_indices=[int(stage)])
    else:
        kwargs.setdefault("num_classes", 0)
        if pool == "cls+mean":
            kwargs["global_pool"] = ""  # every token out: the class token and the patch tokens
    model = load_timm(name, pretrained=pretrained, **kwargs)
    if stage is not None:
        n_features = int(model.feature_info.channels()[-1])
    else:
        n_features = int(model.num_features) * (2 if pool == "cls+mean" else 1)
    cfg = timm.data.resolve_model_data_config(model)
    return TimmFeatures(model, n_features, cfg["mean"], cfg["std"], stage=stage, pool=pool)


class LinearProbe(nn.Module):
    """Frozen encoder → StandardScaler → PCA → Ridge, fitted in closed form (see the module docstring).

    An ``nn.Module`` only so that it moves between devices and predicts batches like the other
    predictors (``forward(patches) -> (B, n_genes)``); it has no trainable parameter. Fit it with
    :meth:`fit`, never with an optimiser.

    Parameters
    ----------
    n_genes
        Genes predicted.
    encoder
        A module mapping patches to (B, n_features) features, or ``None`` to fit and predict
        from precomputed features only.
    n_components
        PCA components (HEST: 256); capped at the number of samples and features. ``None``
        skips scaler and PCA (HEST's ``dimreduce=None``).
    alpha
        Ridge penalty; ``None`` uses :func:`hest_alpha` of the PCA width and ``n_genes``;
        ``"cv"`` picks it from :data:`CV_ALPHAS` by leave-one-out error on the training spots
        (:meth:`cv_alpha`; not HEST: its rule assumes pretrained features, see the module docstring).
    fit_intercept
        Fit an intercept (default; HEST: False, see the module docstring).
    max_iter, random_state
        Of the ``lsqr`` ridge solver and of the PCA (HEST: 1000 and the run's seed).
    batch_size
        Patches per encoder forward in :meth:`encode`.
    """

    def __init__(
        self,
        n_genes: int,
        encoder: nn.Module | None = None,
        n_components: int | None = 256,
        alpha: float | str | None = None,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        random_state: int = 0,
        batch_size: int = 64,
    ):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        if n_components is not None and n_components < 1:
            raise ValueError(f"n_components must be positive or None, got {n_components}")
        if isinstance(alpha, str) and alpha != "cv":
            raise ValueError(f"alpha must be a number, None (HEST's rule) or 'cv', got {alpha!r}")
        if alpha is not None and not isinstance(alpha, str) and alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.n_genes = int(n_genes)
        self.encoder = encoder
        if encoder is not None:
            for p in encoder.parameters():
                p.requires_grad_(False)
            encoder.eval()
        self.n_components = n_components
        self.alpha = alpha
        self.fit_intercept = bool(fit_intercept)
        self.max_iter = int(max_iter)
        self.random_state = int(random_state)
        self.batch_size = int(batch_size)
        # fitted state (sklearn convention: trailing underscore)
        self.scaler_ = None
        self.pca_ = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None
        self.alpha_: float | None = None
        self.n_components_: int | None = None
        self.n_features_in_: int | None = None

    # -- encoder ------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> LinearProbe:
        """Switch the flag only: the encoder stays in eval mode (it is frozen)."""
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    @torch.no_grad()
    def encode(self, patches: torch.Tensor | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Global features of (n, 3, H, W) patches (``uint8`` 0–255 or float 0–1), (n, n_features) float32."""
        if self.encoder is None:
            raise RuntimeError("this probe has no encoder (encoder=None): pass features (n, n_features) instead")
        patches = torch.as_tensor(patches)
        if patches.dim() != 4:
            raise ValueError(f"patches must be (n, 3, H, W), got shape {tuple(patches.shape)}")
        bs = int(batch_size or self.batch_size)
        self.encoder.eval()
        try:
            device = next(self.encoder.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
        out = [self.encoder(patches[i:i + bs].to(device)).float().cpu() for i in range(0, len(patches), bs)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)

    def _as_features(self, x) -> np.ndarray:
        if (isinstance(x, torch.Tensor) and x.dim() == 4) or (isinstance(x, np.ndarray) and x.ndim == 4):
            x = self.encode(x)
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected patches (n, 3, H, W) or features (n, n_features), got shape {x.shape}")
        return x.astype(np.float64, copy=False)

    # -- fitting ------------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    def transform(self, patches_or_features) -> np.ndarray:
        """Scaled and PCA-reduced features, (n, n_components_)."""
        self._require_fitted()
        x = self._as_features(patches_or_features)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"features have width {x.shape[1]}, the probe was fitted on {self.n_features_in_}")
        if self.pca_ is not None:
            x = self.pca_.transform(self.scaler_.transform(x))
        return x

    def fit(self, patches_or_features, targets, mask=None) -> LinearProbe:
        """Fit scaler, PCA and ridge on training spots.

        Parameters
        ----------
        patches_or_features
            (n, 3, H, W) patches (encoded with :meth:`encode`) or (n, n_features) features.
        targets
            (n, n_genes) expression.
        mask
            Optional (n, n_genes) bool, True where a target is a real value; each gene is fitted
            on its own True rows.
        """
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge
        from sklearn.preprocessing import StandardScaler

        x = self._as_features(patches_or_features)
        y = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        y = y.astype(np.float64, copy=False)
        n = x.shape[0]
        if y.shape != (n, self.n_genes):
            raise ValueError(f"targets have shape {y.shape}, expected ({n}, {self.n_genes})")
        if mask is None:
            m = np.ones(y.shape, dtype=bool)
        else:
            m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            m = m.astype(bool)
            if m.shape != y.shape:
                raise ValueError(f"mask has shape {m.shape}, expected {y.shape}")
        empty = np.flatnonzero(m.sum(axis=0) == 0)
        if empty.size:
            raise ValueError(f"gene column(s) {empty[:10].tolist()} have no observed training value: nothing to fit")
        if n < 2:
            raise ValueError(f"the probe needs at least 2 training spots, got {n}")

        self.n_features_in_ = x.shape[1]
        if self.n_components is None:
            self.scaler_, self.pca_ = None, None
            z = x
        else:
            k = int(min(self.n_components, n, x.shape[1]))
            self.scaler_ = StandardScaler().fit(x)
            self.pca_ = PCA(n_components=k, random_state=self.random_state)
            z = self.pca_.fit_transform(self.scaler_.transform(x))
        self.n_components_ = z.shape[1]
        if self.alpha == "cv":
            self.alpha_ = self.cv_alpha(z, y, m)
        else:
            self.alpha_ = float(self.alpha) if self.alpha is not None else hest_alpha(z.shape[1], self.n_genes)

        def ridge(zz, yy):
            reg = Ridge(alpha=self.alpha_, solver="lsqr", fit_intercept=self.fit_intercept,
                        max_iter=self.max_iter, random_state=self.random_state)
            reg.fit(zz, yy)
            return np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_) * np.ones(yy.shape[1] if yy.ndim > 1 else 1)

        coef = np.zeros((self.n_genes, z.shape[1]))
        intercept = np.zeros(self.n_genes)
        full = m.all(axis=0)
        if full.any():
            c, b = ridge(z, y[:, full])
            coef[full], intercept[full] = c, b
        for g in np.flatnonzero(~full):
            rows = m[:, g]
            c, b = ridge(z[rows], y[rows, g:g + 1])
            coef[g], intercept[g] = c[0], b[0]
        self.coef_, self.intercept_ = coef, intercept
        return self

    def cv_alpha(self, z: np.ndarray, y: np.ndarray, m: np.ndarray) -> float:
        """The ridge penalty of :data:`CV_ALPHAS` with the lowest leave-one-out error on observed entries.

        Exact leave-one-out residuals of a ridge fit to every gene at once, from one SVD of the
        centred features (the hat-matrix identity ``e_i / (1 − h_ii)``, as scikit-learn's
        ``RidgeCV``), with missing targets set to their gene's observed mean for the fit and
        skipped in the score.
        """
        y = np.where(m, y, np.nanmean(np.where(m, y, np.nan), axis=0))
        zc, yc = z - z.mean(0), y - y.mean(0)
        u, sv, _ = np.linalg.svd(zc, full_matrices=False)
        uty = u.T @ yc
        n = len(z)
        best, best_err = CV_ALPHAS[0], np.inf
        for alpha in CV_ALPHAS:
            shrink = sv**2 / (sv**2 + alpha)
            fitted = u @ (shrink[:, None] * uty)
            h = (u**2) @ shrink + (1.0 / n if self.fit_intercept else 0.0)
            err = float((((yc - fitted) / (1.0 - h)[:, None]) ** 2)[m].mean())
            if err < best_err:
                best, best_err = alpha, err
        return float(best)

    def predict(self, patches_or_features) -> np.ndarray:
        """Predicted expression, (n, n_genes) float32."""
        z = self.transform(patches_or_features)
        return (z @ self.coef_.T + self.intercept_).astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` as a tensor on ``x``'s device (patches or features in, (B, n_genes) out)."""
        return torch.from_numpy(self.predict(x)).to(x.device if isinstance(x, torch.Tensor) else "cpu")

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the linear probe is not fitted yet: call fit(patches_or_features, targets) first")

    # -- size and persistence -----------------------------------------------------------------

    @property
    def n_coefficients(self) -> int:
        """Fitted ridge coefficients: weights (n_genes × n_components_) plus one intercept per gene if fitted."""
        self._require_fitted()
        return int(self.coef_.size + (self.intercept_.size if self.fit_intercept else 0))

    def fitted_sizes(self) -> Mapping[str, int]:
        """Numbers fitted in closed form: ``ridge`` (:attr:`n_coefficients`), ``pca`` (components and
        mean), ``scaler`` (mean and scale); the encoder's weights are frozen, not fitted."""
        self._require_fitted()
        f = self.n_features_in_
        pca = 0 if self.pca_ is None else self.pca_.components_.size + self.pca_.mean_.size
        scaler = 0 if self.scaler_ is None else 2 * f
        return {"ridge": self.n_coefficients, "pca": int(pca), "scaler": int(scaler)}

    def save(self, path: str | Path) -> Path:
        """Write the whole probe (encoder included) with joblib."""
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        """Read a probe written by :meth:`save` (joblib; only load files you trust)."""
        import joblib

        obj = joblib.load(Path(path))
        if not isinstance(obj, cls):
            raise TypeError(f"{path} holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj


def linear_probe(
    n_genes: int,
    pretrained: bool = False,
    encoder: str | None = "resnet50",
    n_components: int | None = 256,
    alpha: float | str | None = None,
    fit_intercept: bool = True,
    stage: int | None | str = "auto",
    random_state: int = 0,
    batch_size: int = 64,
    timm_kwargs: dict | None = None,
) -> LinearProbe:
    """HEST linear probe of a frozen timm encoder (see the module docstring).

    Parameters
    ----------
    n_genes
        Genes predicted.
    pretrained
        Load the encoder's pretrained weights (download or cache; offline this raises
        :class:`~spared_utils.models.encoders.PretrainedWeightsUnavailable`).
    encoder
        A timm model name; ``"resnet50"`` = HEST's truncated ResNet-50 (``resnet50.tv_in1k``
        after stage 3, 1024 features); a short name of :data:`FOUNDATION_MODELS` (``"uni"``,
        ``"uni2-h"``, ``"h-optimus-0"``, ``"h-optimus-1"``, ``"virchow2"``: the model card's timm
        arguments and feature read-out); ``None`` = no encoder (fit on precomputed features).
    n_components, alpha, fit_intercept, random_state, batch_size
        See :class:`LinearProbe` (HEST: 256, ``100 / (256 · n_genes)``, False, the seed).
    stage
        ``"auto"``: 3 for ``"resnet50"``, else ``None`` (the model's pooled output); or an
        explicit ``features_only`` stage index.
    timm_kwargs
        Extra arguments of ``timm.create_model`` (e.g. ``{"dynamic_img_size": True}`` for a ViT
        fed patches other than 224 px); for a foundation model they update the card's.
    """
    module = None
    if encoder is not None:
        kwargs, pool = dict(timm_kwargs or {}), "model"
        foundation = FOUNDATION_MODELS.get(encoder.lower())
        if foundation is not None:
            name, auto_stage, pool = foundation.name, None, foundation.pool
            kwargs = {**foundation.kwargs(), **kwargs}
        else:
            name, auto_stage = (HEST_RESNET50 if encoder == "resnet50" else (encoder, None))
        module = timm_features(name, pretrained=pretrained, stage=auto_stage if stage == "auto" else stage,
                               pool=pool, **kwargs)
    return LinearProbe(n_genes, module, n_components=n_components, alpha=alpha, fit_intercept=fit_intercept,
                       random_state=random_state, batch_size=batch_size)


__all__ = ["CV_ALPHAS", "FOUNDATION_MODELS", "HEST_RESNET50", "FoundationModel", "LinearProbe", "ProbeTask",
           "TimmFeatures", "hest_alpha", "hf_repo", "linear_probe", "load_timm", "timm_features"]


class ProbeTask(Task):
    """Linear probe: frozen features of the training spots → scaler → PCA → ridge, in closed form."""

    closed_form = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        encoder = self.model.encoder
        if encoder is None:
            raise ValueError("the linear probe needs an encoder to read patches (linear_probe(..., encoder='resnet50'))")
        encoder.to(self.device)
        # the encoder's weights are fixed by its name, pretrained flag and the seed it was built with
        key = ("probe", type(getattr(encoder, "model", encoder)).__name__, repr(encoder)[:2000], self.seed,
               str(self.device), hash(tuple(float(p.double().sum()) for p in list(encoder.parameters())[:4])))
        self.features = shared_cache(self.data, key, lambda: FrozenCache(
            self.data, encoder, self.device, name="frozen encoder features", progress=self.progress, module=encoder))

    def fit(self, net, validate):
        t0 = time.perf_counter()
        rows = self.train_rows
        (feats,) = self.features.get(rows)
        mask = None if self._loss_mask_is_full(rows) else self.data.loss_mask[rows]
        net.fit(feats.numpy(), self.data.target[rows], mask=mask)
        val = float(validate(net))
        wall = time.perf_counter() - t0
        history = pd.DataFrame([{"iteration": 1, "train_loss": float("nan"), "val_loss": val, "elapsed_s": wall}])
        return TrainResult(val, 1, history, wall, str(self.device))

    def _predict(self, net, rows, progress):
        (feats,) = self.features.get(rows)
        return net.predict(feats.numpy())
