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
are available (e.g. ``"hf-hub:MahmoodLab/uni"`` with ``timm_kwargs={"init_values": 1e-5,
"dynamic_img_size": True}``, or ``"hf-hub:bioptimus/H-optimus-0"``; both gated on Hugging Face). The
features are the model's global pooled output (``num_classes=0``: the class token of a ViT, the
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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .encoders import ImageNormalize, PretrainedWeightsUnavailable, _reachable
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
    ``stage=k``: the model built with ``features_only=True, out_indices=[k]``, average-pooled.
    """

    def __init__(self, model: nn.Module, n_features: int, mean, std, stage: int | None = None):
        super().__init__()
        self.normalize = ImageNormalize(mean, std)
        self.model = model
        self.n_features = int(n_features)
        self.stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(self.normalize(x))
        if self.stage is not None:
            out = out[0] if isinstance(out, (list, tuple)) else out
            out = out.mean(dim=(-2, -1))
        return out


def _hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _offline_reason(name: str) -> str | None:
    """Why ``name``'s weights surely cannot be loaded (not cached, source unreachable), else None.

    Checked before timm tries, so that an offline machine fails at once instead of after the
    Hugging Face client's retries.
    """
    from timm.models import get_pretrained_cfg

    if name.startswith(("hf-hub:", "hf_hub:")):
        repo, url = name.split(":", 1)[1].split("@")[0], None
    else:
        cfg = get_pretrained_cfg(name)
        repo, url = (cfg.hf_hub_id, cfg.url) if cfg is not None else (None, None)
    if repo:
        cached = _hf_cache_dir() / f"models--{repo.replace('/', '--')}"
        if not cached.is_dir() and not _reachable("https://huggingface.co"):
            return f"{repo} is not in the Hugging Face cache ({_hf_cache_dir()}) and huggingface.co cannot be reached"
    elif url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name
        if not cached.is_file() and not _reachable(url):
            return f"{cached} is not cached and {url} cannot be reached"
    return None


def _weights_message(name: str, detail: str) -> str:
    return (
        f"pretrained=True needs the weights of timm model {name!r}, but {detail}. Either pass "
        "pretrained=False (random initialisation, as the offline demo does), or make the weights "
        "available: connect to the internet (and, for a gated Hugging Face model such as UNI or "
        "H-optimus-0, request access and log in with `huggingface-cli login`), or point HF_HUB_CACHE / "
        "TORCH_HOME at a cache that holds them."
    )


def timm_features(name: str, pretrained: bool = False, stage: int | None = None, **timm_kwargs) -> TimmFeatures:
    """Build a frozen-to-be timm feature extractor (see :class:`TimmFeatures`).

    Raises
    ------
    ValueError
        For a name timm does not know (``hf-hub:`` names are passed through).
    PretrainedWeightsUnavailable
        When ``pretrained=True`` and the weights cannot be downloaded (offline, or a gated model
        without access).
    """
    import timm

    if not name.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(name):
        raise ValueError(f"timm knows no model {name!r} (see timm.list_models())")
    kwargs = dict(timm_kwargs)
    if stage is None:
        kwargs.setdefault("num_classes", 0)
    else:
        kwargs.update(features_only=True, out_indices=[int(stage)])
    if pretrained:
        reason = _offline_reason(name)
        if reason:
            raise PretrainedWeightsUnavailable(_weights_message(name, reason))
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub/HTTP/cache errors come in many classes
        if not pretrained:
            raise
        raise PretrainedWeightsUnavailable(_weights_message(name, f"loading them failed ({err})")) from err
    if stage is None:
        n_features = int(model.num_features)
    else:
        n_features = int(model.feature_info.channels()[-1])
    cfg = timm.data.resolve_model_data_config(model)
    return TimmFeatures(model, n_features, cfg["mean"], cfg["std"], stage=stage)


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
        after stage 3, 1024 features); ``None`` = no encoder (fit on precomputed features).
    n_components, alpha, fit_intercept, random_state, batch_size
        See :class:`LinearProbe` (HEST: 256, ``100 / (256 · n_genes)``, False, the seed).
    stage
        ``"auto"``: 3 for ``"resnet50"``, else ``None`` (the model's pooled output); or an
        explicit ``features_only`` stage index.
    timm_kwargs
        Extra arguments of ``timm.create_model`` (e.g. ``{"dynamic_img_size": True}`` for a ViT
        fed patches other than 224 px).
    """
    module = None
    if encoder is not None:
        name, auto_stage = (HEST_RESNET50 if encoder == "resnet50" else (encoder, None))
        module = timm_features(name, pretrained=pretrained, stage=auto_stage if stage == "auto" else stage,
                               **(timm_kwargs or {}))
    return LinearProbe(n_genes, module, n_components=n_components, alpha=alpha, fit_intercept=fit_intercept,
                       random_state=random_state, batch_size=batch_size)


__all__ = ["CV_ALPHAS", "HEST_RESNET50", "LinearProbe", "ProbeTask", "TimmFeatures", "hest_alpha", "linear_probe", "timm_features"]


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
