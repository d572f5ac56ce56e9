"""Patch-encoder predictors: one 224 px patch → the expression of every gene.

Four predictors of the paper share one shape, :class:`PatchRegressor`: an ImageNet backbone
(torchvision, as in the authors' SpaRED code), its classifier replaced by one linear layer with
one output per gene.

==============  ==============================  ===============================================
name            backbone (torchvision)           what differs
==============  ==============================  ===============================================
``shufflenet``  ``shufflenet_v2_x0_5`` (width)   nothing: the cheapest fine-tuned encoder
``vit_b``       ``vit_b_16``                     nothing
``vit_b_delta`` ``vit_b_16``                     predicts Δ = expression − training mean; the
                                                 mean is added back (ViT-B+Δ of SEPAL); head
                                                 starts at 0, so the untrained model predicts
                                                 the training mean
``stnet``       ``densenet121``                  head weights start at 0 and its bias at the
                                                 training mean; input normalised with the
                                                 training patches' channel mean/std; prediction
                                                 averaged over the 8 dihedral views (ST-Net)
==============  ==============================  ===============================================

Facts checked in the official code: SpaRED's ``ImageEncoder`` builds ShuffleNetV2 with
``shufflenet_v2_x0_5`` (the issue text said x1.0; the width is the ``width`` option here, default
0.5 as the authors ran it), ``vit_b_16`` and ``densenet121``, all with ``IMAGENET1K_V1`` weights,
and trains with random horizontal/vertical flips and 90° rotations. ST-Net (bryanhe/ST-Net,
``run_spatial.py``) zeroes the last layer's weights, sets its bias to the mean training
expression, and normalises patches with a channel mean/std estimated on training patches.

Input convention: a batch of patches as ``uint8`` (B, 3, H, W) in 0–255 (what the patch dataset
yields; cheap to move to a GPU) or ``float`` in 0–1. Normalisation is the model's first layer
(:class:`ImageNormalize`), so a checkpoint carries the statistics it was trained with.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from .task import Task, masked_mse_loss, predict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHUFFLENET_WIDTHS = {0.5: "x0_5", 1.0: "x1_0", 1.5: "x1_5", 2.0: "x2_0"}


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but are neither cached nor downloadable."""


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class ImageNormalize(nn.Module):
    """``uint8`` 0–255 or float 0–1 patches → float, normalised with per-channel mean/std."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the statistics (values on the 0–1 scale)."""
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if not torch.all(std_t > 0):
            raise ValueError(f"channel std must be positive, got {list(map(float, std_t.ravel()))}")
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square (4 rotations × with/without a flip) of a (B, C, H, W) batch."""
    views = []
    for flipped in (x, torch.flip(x, dims=(-1,))):
        for k in range(4):
            views.append(torch.rot90(flipped, k, dims=(-2, -1)))
    return views


def resize_square(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """(B, C, H, W) images resized to ``size`` × ``size`` (bilinear, antialiased); unchanged when
    ``size`` is None or already theirs."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


class PatchRegressor(nn.Module):
    """Backbone features → linear head → one value per gene (see the module docstring).

    Parameters
    ----------
    backbone
        Module mapping normalised (B, 3, 224, 224) images to (B, n_features).
    n_features, n_genes
        Width of the backbone's output and number of genes predicted.
    predict_delta
        If True the head predicts Δ from :attr:`offset`, set to the training mean by
        :meth:`set_target_mean` (ViT-B+Δ); MSE on Δ equals MSE on the sum, so the loss is unchanged.
    mean_init_head
        If True :meth:`set_target_mean` zeroes the head's weights and sets its bias so that the first
        prediction of every patch is the training mean: the mean itself (STNet), or 0 when the head
        predicts Δ (the mean is then in :attr:`offset`).
    dihedral_average
        If True, in eval mode the prediction is the mean over the 8 dihedral views (STNet).
    input_stats
        ``"imagenet"`` (the default normalisation) or ``"training"`` (the harness estimates a
        channel mean/std on training patches and calls :meth:`set_input_stats`).
    input_size
        If set, patches are resized to ``input_size`` × ``input_size`` pixels (bilinear, with
        antialiasing) before the backbone: the CPU demo reads 112 px instead of the stored 224
        (about 3–4× fewer operations); ``None`` reads the patch as stored (the paper).
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_features: int,
        n_genes: int,
        *,
        name: str = "patch_regressor",
        predict_delta: bool = False,
        mean_init_head: bool = False,
        dihedral_average: bool = False,
        input_stats: str = "imagenet",
        input_size: int | None = None,
    ):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        if input_stats not in ("imagenet", "training"):
            raise ValueError(f"input_stats must be 'imagenet' or 'training', got {input_stats!r}")
        self.name = name
        self.predict_delta = predict_delta
        self.mean_init_head = mean_init_head
        self.dihedral_average = dihedral_average
        self.input_stats = input_stats
        if input_size is not None and int(input_size) < 16:
            raise ValueError(f"input_size must be at least 16 pixels (or None), got {input_size}")
        self.input_size = None if input_size is None else int(input_size)
        self.normalize = ImageNormalize()
        self.backbone = backbone
        self.head = nn.Linear(n_features, n_genes)
        self.register_buffer("offset", torch.zeros(n_genes))

    @property
    def n_genes(self) -> int:
        return self.head.out_features

    def set_target_mean(self, mean: np.ndarray | torch.Tensor) -> None:
        """Hand the model the training mean of each gene (used by ViT-B+Δ and STNet only)."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).to(self.offset.device)
        if mean.shape != (self.n_genes,):
            raise ValueError(f"the training mean has shape {tuple(mean.shape)}, expected ({self.n_genes},)")
        with torch.no_grad():
            if self.predict_delta:
                self.offset.copy_(mean)
            if self.mean_init_head:
                self.head.weight.zero_()
                if self.predict_delta:
                    self.head.bias.zero_()
                else:
                    self.head.bias.copy_(mean)

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalise inputs with this channel mean/std (0–1 scale) instead of ImageNet's."""
        self.normalize.set_stats(mean, std)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's features of a batch of patches (before the head).

        Patches are resized (bilinear, antialiased) to :attr:`input_size` when it is set, and to
        the backbone's fixed input size when it has one (torchvision's ViT: ``image_size``); the
        CNNs read any size.
        """
        x = resize_square(self.normalize(x), getattr(self.backbone, "image_size", None) or self.input_size)
        return self.backbone(x)

    def forward_single(self, x: torch.Tensor) -> torch.Tensor:
        """One prediction per patch, without test-time averaging."""
        return self.head(self.embed(x)) + self.offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dihedral_average and not self.training:
            total = None
            for view in dihedral_views(x):
                out = self.forward_single(view)
                total = out if total is None else total + out
            return total / 8.0
        return self.forward_single(x)


# ---------------------------------------------------------------------------------------------
# Pretrained weights: cached or downloaded, with a clear error offline
# ---------------------------------------------------------------------------------------------


def weights_cache_path(weights) -> Path:
    """Where torch.hub keeps (or would keep) a torchvision weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host and port opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_message(weights, detail: str) -> str:
    cache = weights_cache_path(weights)
    return (
        f"pretrained=True needs the ImageNet weights {weights} but {detail}. This machine seems to have "
        f"no internet access. Either pass pretrained=False (random initialisation, as the offline "
        f"demo does), or download {weights.url} on a machine with internet and copy it to {cache} "
        f"(TORCH_HOME selects the cache folder)."
    )


def state_dict_mismatch(text: str) -> str:
    """The gist of ``load_state_dict``'s error: how many shapes differ and the first, else the
    first line naming missing or unexpected keys (else the first line)."""
    lines = [ln.strip().rstrip(".") for ln in text.splitlines() if ln.strip()]
    sizes = [ln for ln in lines if ln.startswith("size mismatch")]
    if sizes:
        return f"{len(sizes)} size mismatch(es), the first: {sizes[0][:240]}"
    keys = [ln for ln in lines if "Missing key" in ln or "Unexpected key" in ln]
    return (keys or lines or ["unreadable"])[0].split(". ")[0][:300]  # its first sentence


def _mismatch_message(factory, weights, err: Exception) -> str:
    cache = weights_cache_path(weights)
    return (
        f"pretrained=True: the weights file {cache} does not fit torchvision's {factory.__name__} "
        f"({type(err).__name__}: {state_dict_mismatch(str(err))}). It is not the file torchvision publishes at "
        f"{weights.url} (a truncated download, or another model's weights under that name). Delete "
        f"it so that it is downloaded again, or set TORCH_HOME to a cache that holds the right file."
    )


def pretrained_stats(weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The channel mean and std (0–1 scale) that torchvision's ``weights`` were trained with
    (their ``transforms()``: ImageNet's for every weight this package loads)."""
    preset = weights.transforms()
    return tuple(map(float, preset.mean)), tuple(map(float, preset.std))


def load_torchvision(factory: Callable[..., nn.Module], weights, pretrained: bool, **kwargs) -> nn.Module:
    """``factory(weights=...)`` with ImageNet weights if ``pretrained``, failing fast offline.

    torchvision reads the file from ``$TORCH_HOME/hub/checkpoints/<name of weights.url>`` when it
    is there (torch.hub checks the file's hash only when it downloads it) and downloads it
    otherwise, into a temporary file that torch.hub removes if the download fails. Every failure
    raises :class:`PretrainedWeightsUnavailable` naming the model, the file and what to do: an
    uncached file with the host unreachable (checked first, so that an offline machine fails at
    once), a failed download, or a cached file that does not fit the architecture.
    """
    if not pretrained:
        return factory(weights=None, **kwargs)
    if not weights_cache_path(weights).is_file() and not _reachable(weights.url):
        raise PretrainedWeightsUnavailable(_offline_message(weights, f"{weights_cache_path(weights)} is not cached "
                                                                     f"and {urlparse(weights.url).hostname} cannot be reached"))
    try:
        return factory(weights=weights, **kwargs)
    except OSError as err:  # URLError is an OSError
        raise PretrainedWeightsUnavailable(_offline_message(weights, f"the download failed ({err})")) from err
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:  # load_state_dict, torch.load
        raise PretrainedWeightsUnavailable(_mismatch_message(factory, weights, err)) from err


# ---------------------------------------------------------------------------------------------
# The four predictors
# ---------------------------------------------------------------------------------------------


def shufflenet(n_genes: int, pretrained: bool = False, width: float = 0.5,
               input_size: int | None = None, mean_init_head: bool = False) -> PatchRegressor:
    """ShuffleNetV2 (channel multiplier ``width``: 0.5 as in SpaRED, or 1.0, 1.5, 2.0) + linear head
    (``input_size``, ``mean_init_head``: see :class:`PatchRegressor`)."""
    from torchvision import models

    if width not in SHUFFLENET_WIDTHS:
        raise ValueError(f"ShuffleNetV2 width must be one of {sorted(SHUFFLENET_WIDTHS)}, got {width}")
    suffix = SHUFFLENET_WIDTHS[width]
    weights = getattr(models, f"ShuffleNet_V2_{suffix.upper()}_Weights").IMAGENET1K_V1
    net = load_torchvision(getattr(models, f"shufflenet_v2_{suffix}"), weights, pretrained)
    n_features = net.fc.in_features
    net.fc = nn.Identity()
    model = PatchRegressor(net, n_features, n_genes, name="shufflenet", input_size=input_size,
                           mean_init_head=mean_init_head)
    return _with_pretrained_stats(model, weights, pretrained)


def _with_pretrained_stats(model: PatchRegressor, weights, pretrained: bool) -> PatchRegressor:
    """Normalise inputs with the statistics ``weights`` were trained with (when they are loaded)."""
    if pretrained:
        model.set_input_stats(*pretrained_stats(weights))
    return model


def _vit_b_16(pretrained: bool, input_size: int | None = None) -> tuple[nn.Module, int]:
    """torchvision's ViT-B/16 for ``input_size`` px inputs (None: 224, its ImageNet size).

    At another size the ImageNet position embeddings are interpolated to the new grid of 16-px
    tiles (torchvision's ``interpolate_embeddings``), the usual way to fine-tune a ViT at
    another resolution.
    """
    from torchvision import models
    from torchvision.models.vision_transformer import interpolate_embeddings

    size = 224 if input_size is None else int(input_size)
    if size % 16:
        raise ValueError(f"ViT-B/16 needs an input_size that is a multiple of 16, got {size}")
    net = load_torchvision(models.vit_b_16, models.ViT_B_16_Weights.IMAGENET1K_V1, pretrained)
    if size != net.image_size:
        state = interpolate_embeddings(size, 16, net.state_dict())
        net = models.vit_b_16(weights=None, image_size=size)
        net.load_state_dict(state)
    n_features = net.heads.head.in_features
    net.heads = nn.Identity()
    return net, n_features


def vit_b(n_genes: int, pretrained: bool = False, mean_init_head: bool = False,
          input_size: int | None = None) -> PatchRegressor:
    """ViT-B/16 at 224 px (or ``input_size``) + linear head (``mean_init_head``: start at the mean)."""
    from torchvision import models

    net, n_features = _vit_b_16(pretrained, input_size)
    model = PatchRegressor(net, n_features, n_genes, name="vit_b", mean_init_head=mean_init_head)
    return _with_pretrained_stats(model, models.ViT_B_16_Weights.IMAGENET1K_V1, pretrained)


def vit_b_delta(n_genes: int, pretrained: bool = False, mean_init_head: bool = True,
                input_size: int | None = None) -> PatchRegressor:
    """ViT-B/16 predicting Δ from the training mean; the mean is added back.

    ``mean_init_head=True`` (default) zeroes the head, so training starts from the training mean
    (Δ = 0); ``False`` keeps PyTorch's randomly initialised head, as the authors' code does, which
    starts from the mean plus that head's output on random features. ``input_size``: the ViT's
    input in pixels (224, the paper's, when None).
    """
    from torchvision import models

    net, n_features = _vit_b_16(pretrained, input_size)
    model = PatchRegressor(net, n_features, n_genes, name="vit_b_delta", predict_delta=True,
                           mean_init_head=mean_init_head)
    return _with_pretrained_stats(model, models.ViT_B_16_Weights.IMAGENET1K_V1, pretrained)


def stnet(n_genes: int, pretrained: bool = False, dihedral_average: bool = True,
          input_size: int | None = None) -> PatchRegressor:
    """DenseNet-121 + linear head started at the training mean; 8-view average at evaluation
    (``input_size``: see :class:`PatchRegressor`)."""
    from torchvision import models

    weights = models.DenseNet121_Weights.IMAGENET1K_V1
    net = load_torchvision(models.densenet121, weights, pretrained)
    n_features = net.classifier.in_features
    net.classifier = nn.Identity()
    # input_stats="training": the harness replaces these statistics with the training patches'
    model = PatchRegressor(
        net, n_features, n_genes, name="stnet", mean_init_head=True,
        dihedral_average=dihedral_average, input_stats="training", input_size=input_size,
    )
    return _with_pretrained_stats(model, weights, pretrained)


class PatchTask(Task):
    """One patch → one spot (ShuffleNet, ViT-B, ViT-B+Δ, STNet): masked MSE on each batch."""

    def batches(self) -> Iterable:
        return self._patch_loader(self.train_rows, True, True)

    def loss(self, net, batch):
        images, target, mask = batch
        return masked_mse_loss(net(images), target, mask)

    def _predict(self, net, rows, progress):
        return predict(net, self.data, rows, device=self.device, amp=self.amp, progress=progress,
                       loader=self._patch_loader(rows, False, False))
