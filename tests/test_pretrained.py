"""Pretrained weights through the loading code users run, offline.

Weights come from two places, and both are served here from files the test generates for the
exact architecture (built with random weights, then changed deterministically, so that a loaded
tensor equal to the served one can only come from the file):

* **The Hugging Face Hub** (timm names such as ``resnet50.tv_in1k`` → ``timm/resnet50.tv_in1k``,
  and ``hf-hub:`` names): a minimal Hub on 127.0.0.1 (``LoopbackHub``) answers huggingface_hub's
  ``HEAD``/``GET /<org>/<name>/resolve/<revision>/<file>`` with the headers its client reads
  (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``), gated repositories answer 401 without a token
  and 403 with a token that has no access. ``hf_env`` points the client at it and at an empty
  cache in a temporary folder, as ``HF_ENDPOINT`` / ``HF_HOME`` / ``HF_HUB_OFFLINE`` do in a fresh
  process (the client reads them when it is imported, so the test also sets its constants; one
  test starts a fresh Python with the variables alone).
* **torchvision** (download.pytorch.org): the file is written where torch.hub looks,
  ``$TORCH_HOME/hub/checkpoints/<basename of the weights' URL>`` (torch.hub checks a hash only
  when it downloads).

Every predictor whose record takes pretrained weights is built through ``su.models.build`` (the
chapters' path) with ``pretrained=True``; the five foundation models of the linear probe are built
by their short names with the ``timm`` arguments of their model cards (huggingface.co/MahmoodLab/UNI,
/MahmoodLab/UNI2-h, /bioptimus/H-optimus-0, /bioptimus/H-optimus-1, /paige-ai/Virchow2). These are
ViT-L/H/g models of 0.3–1.1 billion parameters: the served ``config.json`` names the real
architecture with the model arguments the cards describe, the weights are generated at depth 1
(``timm_kwargs={"depth": 1}``, the one argument changed) and the full-size model is built on
PyTorch's meta device through the same path to check its width, depth, tokens and parameter
count against the cards.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from spared_utils import models
from spared_utils.models import encoders, exemplar, probe
from spared_utils.models.encoders import PretrainedWeightsUnavailable
from tests.fixtures_http import QuietHandler

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GENES = 4


# ---------------------------------------------------------------------------------------------
# A loopback Hugging Face Hub
# ---------------------------------------------------------------------------------------------


@dataclass
class LoopbackHub:
    """Repositories (name → {file: bytes}) served as the Hub's ``resolve`` endpoint does."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    #: gated repositories: name → tokens granted access
    gated: dict[str, set[str]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def start(self) -> LoopbackHub:
        hub = self

        class Handler(QuietHandler):
            def _serve(self, head: bool) -> None:
                auth = self.headers.get("authorization")
                hub.requests.append((self.command, self.path, auth))
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._reply(404, {"X-Error-Code": "EntryNotFound"}, b"", head)
                repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo in hub.gated:
                    token = auth.split()[-1] if auth else None
                    if token is None:
                        return self._reply(401, {"X-Error-Code": "GatedRepo"}, b"log in", head)
                    if token not in hub.gated[repo]:
                        return self._reply(403, {"X-Error-Code": "GatedRepo"}, b"no access", head)
                if repo not in hub.repos:
                    return self._reply(401, {"X-Error-Code": "RepoNotFound"}, b"", head)
                data = hub.repos[repo].get(filename)
                if data is None:
                    return self._reply(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", head)
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                return self._reply(200, {"X-Repo-Commit": COMMIT, "ETag": etag}, data, head)

            def _reply(self, status: int, headers: dict, body: bytes, head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fetched(self, repo: str) -> set[str]:
        """Files of ``repo`` that a client downloaded (GET answered with the file)."""
        prefix = f"/{repo}/resolve/"
        return {p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p, _ in self.requests
                if m == "GET" and p.startswith(prefix) and p.split("/resolve/", 1)[1].split("/", 1)[1]
                in self.repos.get(repo, {})}


@pytest.fixture
def hub():
    server = LoopbackHub().start()
    yield server
    server.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HfEnv:
    cache: Path
    monkeypatch: pytest.MonkeyPatch

    def set(self, endpoint: str | None = None, offline: bool | None = None) -> None:
        """Point huggingface_hub at ``endpoint`` and/or offline mode, as the variables would."""
        from huggingface_hub import constants

        if endpoint is not None:
            self.monkeypatch.setenv("HF_ENDPOINT", endpoint)
            self.monkeypatch.setattr(constants, "ENDPOINT", endpoint)
            self.monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                                     endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        if offline is not None:
            self.monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
            self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)

    def files(self) -> set[Path]:
        return {p for p in self.cache.parent.rglob("*") if p.is_file()}


@pytest.fixture
def hf_env(tmp_path, monkeypatch, hub) -> HfEnv:
    """An empty Hugging Face cache under ``tmp_path`` and the loopback hub as the endpoint, no token."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    env = HfEnv(cache, monkeypatch)
    env.set(endpoint=hub.url, offline=False)
    return env


# ---------------------------------------------------------------------------------------------
# Generated weights
# ---------------------------------------------------------------------------------------------


def perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every float tensor changed deterministically (x → x/2 + 1/8), contiguous."""
    return {k: (v * 0.5 + 0.125 if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state)


@pytest.fixture(scope="module")
def timm_weights():
    """Generated timm state dicts, by (architecture, sorted kwargs), made once per module."""
    import timm

    made: dict = {}

    def get(arch: str, **kwargs) -> dict[str, torch.Tensor]:
        key = (arch, json.dumps(kwargs, sort_keys=True, default=str))
        if key not in made:
            torch.manual_seed(0)
            made[key] = perturbed(timm.create_model(arch, pretrained=False, **kwargs).state_dict())
        return made[key]

    return get


def serve_timm(hub: LoopbackHub, timm_weights, name: str) -> dict[str, torch.Tensor]:
    """Serve generated weights for timm's registered ``name`` at its Hub repository."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    state = timm_weights(cfg.architecture)
    hub.repos[cfg.hf_hub_id] = {"model.safetensors": safetensors_bytes(state)}
    return state


def assert_loaded(module: torch.nn.Module, served: dict[str, torch.Tensor], dropped: tuple[str, ...] = ()) -> None:
    """Every tensor of ``module`` equals the served one; every served tensor is used except the
    classifier the builder drops (``dropped`` prefixes)."""
    loaded = module.state_dict()
    unused = [k for k in served if k not in loaded and not k.startswith(dropped)]
    assert not unused, f"served tensors the model does not hold: {unused[:5]}"
    different = [k for k, v in loaded.items() if k not in served or not torch.equal(v, served[k])]
    assert not different, f"tensors that are not the served ones: {different[:5]}"


# ---------------------------------------------------------------------------------------------
# Every predictor with pretrained weights, through su.models.build
# ---------------------------------------------------------------------------------------------

#: Where each predictor's pretrained weights come from: torchvision weights of its backbone, the
#: frozen torchvision ResNet of its exemplar bank, timm weights on the Hub, none of its own
#: (SEPAL: its stage 1 is vit_b_delta), or a refusal (trained from scratch in the official code).
SOURCES = {
    "shufflenet": ("torchvision", "ShuffleNet_V2_X0_5_Weights", "shufflenet_v2_x0_5", ("fc.",)),
    "vit_b": ("torchvision", "ViT_B_16_Weights", "vit_b_16", ("heads.",)),
    "vit_b_delta": ("torchvision", "ViT_B_16_Weights", "vit_b_16", ("heads.",)),
    "stnet": ("torchvision", "DenseNet121_Weights", "densenet121", ("classifier.",)),
    "egn": ("exemplar", "ResNet50_Weights", "resnet50", ("fc.",)),
    "eggn": ("exemplar", "ResNet18_Weights", "resnet18", ("fc.",)),
    "bleep": ("hub",),
    "linear_probe": ("hub",),
    "sepal": ("none",),
    "histogene": ("refuses",),
    "hist2st": ("refuses",),
}


def test_every_predictor_says_where_its_weights_come_from():
    assert set(SOURCES) == set(models.RECORDS), "a new predictor needs its pretrained source here"


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose checkpoint cache holds generated weights of every torchvision backbone."""
    from torchvision import models as tv

    home = tmp_path_factory.mktemp("torch_home")
    served = {}
    for source, weights_enum, factory, _ in {v[1:]: v for v in SOURCES.values() if len(v) > 1}.values():
        weights = getattr(tv, weights_enum).IMAGENET1K_V1
        path = home / "hub" / "checkpoints" / os.path.basename(weights.url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        state = perturbed(getattr(tv, factory)(weights=None).state_dict())
        torch.save(state, path)
        served[weights_enum] = state
    return home, served


TORCHVISION = [n for n, s in SOURCES.items() if s[0] == "torchvision"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_predictors_load_the_cached_weights(name, torch_home, monkeypatch):
    from torchvision import models as tv

    home, served = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(encoders, "_reachable", lambda url, timeout=3.0: False)  # the cache alone
    _, weights_enum, _, dropped = SOURCES[name]
    options = dict(models.RECORDS[name].cpu_options)
    model = models.build(name, GENES, pretrained=True, **options)
    state = served[weights_enum]
    size = options.get("input_size")
    if name.startswith("vit") and size not in (None, 224):
        # the CPU option reads 112 px: position embeddings are interpolated, the rest is the file's
        from torchvision.models.vision_transformer import interpolate_embeddings

        state = interpolate_embeddings(size, 16, dict(state))  # it writes into the dict it is given
    assert_loaded(model.backbone, state, dropped)
    preset = getattr(tv, weights_enum).IMAGENET1K_V1.transforms()
    assert torch.allclose(model.normalize.mean.ravel(), torch.tensor(preset.mean))
    assert torch.allclose(model.normalize.std.ravel(), torch.tensor(preset.std))


def test_vit_b_at_its_paper_size_holds_the_file_unchanged(torch_home, monkeypatch):
    home, served = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = models.build("vit_b", GENES, pretrained=True)  # 224 px, as the paper
    assert_loaded(model.backbone, served["ViT_B_16_Weights"], ("heads.",))


@pytest.mark.parametrize("name", [n for n, s in SOURCES.items() if s[0] == "exemplar"])
def test_exemplar_banks_load_the_cached_weights(name, torch_home, monkeypatch):
    home, served = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = models.build(name, GENES, pretrained=True, **dict(models.RECORDS[name].cpu_options))
    assert model.exemplar_pretrained is True
    bank_encoder = exemplar.FrozenEncoder(model.exemplar_backbone, model.exemplar_pretrained)  # as bank_for builds it
    assert_loaded(bank_encoder.net, served[SOURCES[name][1]], SOURCES[name][3])
    # the bank normalises as the official build_exemplar.py does, not with the weights' statistics
    assert torch.allclose(bank_encoder.normalize.mean.ravel(), torch.tensor(exemplar.BANK_MEAN))


@pytest.mark.parametrize("options", [{}, "cpu", {"backbone": "vit_tiny_patch16_224"}],
                         ids=["paper-resnet50", "cpu-resnet18", "vit-tiny"])
def test_bleep_loads_hub_weights_and_their_normalisation(options, hub, hf_env, timm_weights):
    import timm

    options = dict(models.RECORDS["bleep"].cpu_options) if options == "cpu" else options
    backbone = options.get("backbone", "resnet50")
    state = serve_timm(hub, timm_weights, backbone)
    model = models.build("bleep", GENES, pretrained=True, **options)
    assert_loaded(model.image_encoder, state, ("fc.", "head."))
    cfg = timm.models.get_pretrained_cfg(backbone)
    assert hub.fetched(cfg.hf_hub_id) == {"model.safetensors"}
    assert torch.allclose(model.normalize.mean.ravel(), torch.tensor(cfg.mean))
    assert torch.allclose(model.normalize.std.ravel(), torch.tensor(cfg.std))
    if backbone.startswith("vit"):  # a backbone with other statistics than ImageNet's
        assert torch.allclose(model.normalize.mean.ravel(), torch.full((3,), 0.5))
    else:  # the official global_pool="avg"
        assert model.image_encoder.global_pool.pool_type == "avg"


def test_linear_probe_default_loads_hests_resnet50(hub, hf_env, timm_weights):
    state = serve_timm(hub, timm_weights, probe.HEST_RESNET50[0])
    model = models.build("linear_probe", GENES, pretrained=True, **dict(models.RECORDS["linear_probe"].cpu_options))
    encoder = model.encoder
    assert_loaded(encoder.model, state, ("fc.", "layer4."))  # truncated after stage 3
    assert encoder.n_features == 1024
    cfg = encoder.model.pretrained_cfg
    assert torch.allclose(encoder.normalize.mean.ravel(), torch.tensor(cfg["mean"]))


# ---------------------------------------------------------------------------------------------
# The linear probe's foundation models
# ---------------------------------------------------------------------------------------------

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HOPTIMUS = {"mean": [0.707223, 0.578729, 0.703617], "std": [0.211883, 0.230117, 0.177517]}

#: The served ``config.json`` of each repository: the architecture its card names, the model
#: arguments the card describes and the input statistics of its transform.
CONFIGS = {
    "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "num_classes": 0}, IMAGENET),
    "uni2-h": ("vit_giant_patch14_224", {"img_size": 224, "num_classes": 0}, IMAGENET),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "num_classes": 0}, HOPTIMUS),
    "h-optimus-1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224, "num_classes": 0}, HOPTIMUS),
    "virchow2": ("vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                                          "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                                          "reg_tokens": 4, "no_embed_class": True}, IMAGENET),
}
#: What each card says of the full model: patch size, width, blocks, prefix tokens (class +
#: registers) and parameters (millions).
CARDS = {
    "uni": (16, 1024, 24, 1, 303),
    "uni2-h": (14, 1536, 24, 9, 681),
    "h-optimus-0": (14, 1536, 40, 5, 1100),
    "h-optimus-1": (14, 1536, 40, 5, 1100),
    "virchow2": (14, 1280, 32, 5, 632),
}


def config_json(short: str) -> bytes:
    arch, model_args, stats = CONFIGS[short]
    pretrained_cfg = {"tag": "", "custom_load": False, "input_size": [3, 224, 224], "fixed_input_size": True,
                      "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "num_classes": 0,
                      "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head", **stats}
    return json.dumps({"architecture": arch, "num_classes": 0, "model_args": model_args,
                       "pretrained_cfg": pretrained_cfg}).encode()


def serve_foundation(hub, timm_weights, short: str, files: dict | None = None) -> dict[str, torch.Tensor]:
    """Serve ``config.json`` and depth-1 weights of the exact architecture of ``short``."""
    fm = probe.FOUNDATION_MODELS[short]
    arch, model_args, _ = CONFIGS[short]
    state = timm_weights(arch, **{**model_args, **fm.kwargs(), "depth": 1})
    repo = probe.hf_repo(fm.name)
    hub.repos[repo] = {"config.json": config_json(short), "model.safetensors": safetensors_bytes(state),
                       **(files or {})}
    return state


def test_the_probe_knows_the_five_foundation_models_its_documentation_names():
    assert set(probe.FOUNDATION_MODELS) == set(CONFIGS)
    doc = probe.__doc__ + (ROOT / "chapters" / "predictors" / "linear_probe.md").read_text()
    for short, fm in probe.FOUNDATION_MODELS.items():
        assert fm.name.startswith("hf-hub:") and fm.card.lower().endswith(probe.hf_repo(fm.name).lower())
        assert f'"{short}"' in doc or f"`{short}`" in doc, f"{short} is not documented"
    assert probe.FOUNDATION_MODELS["uni"].kwargs() == {"init_values": 1e-5, "dynamic_img_size": True}
    virchow = probe.FOUNDATION_MODELS["virchow2"].kwargs()
    import timm

    assert virchow["mlp_layer"] is timm.layers.SwiGLUPacked and virchow["act_layer"] is torch.nn.SiLU


@pytest.mark.parametrize("short", list(CONFIGS))
def test_foundation_models_load_the_served_weights(short, hub, hf_env, timm_weights):
    fm = probe.FOUNDATION_MODELS[short]
    state = serve_foundation(hub, timm_weights, short)
    model = models.build("linear_probe", GENES, pretrained=True, encoder=short, timm_kwargs={"depth": 1})
    encoder = model.encoder
    assert_loaded(encoder.model, state)
    assert hub.fetched(probe.hf_repo(fm.name)) == {"config.json", "model.safetensors"}
    stats = CONFIGS[short][2]
    assert torch.allclose(encoder.normalize.mean.ravel(), torch.tensor(stats["mean"]))
    assert torch.allclose(encoder.normalize.std.ravel(), torch.tensor(stats["std"]))
    assert encoder.n_features == fm.n_features
    with torch.no_grad():
        feats = encoder(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    assert feats.shape == (2, fm.n_features) and torch.isfinite(feats).all()


@pytest.mark.parametrize("short", list(CONFIGS))
def test_foundation_models_at_full_size_are_the_cards_architectures(short, hub, hf_env, timm_weights):
    """The card's arguments with the served config build the card's model (on the meta device,
    no memory), and the served depth-1 file has the shapes of its first block and of the rest."""
    fm = probe.FOUNDATION_MODELS[short]
    small = serve_foundation(hub, timm_weights, short)
    with torch.device("meta"):
        encoder = models.build("linear_probe", GENES, encoder=short).encoder  # pretrained=False
        feats = encoder(torch.empty(1, 3, 224, 224))
    vit = encoder.model
    patch, width, depth, prefix, millions = CARDS[short]
    assert (vit.patch_embed.patch_size[0], vit.num_features, len(vit.blocks), vit.num_prefix_tokens) == (
        patch, width, depth, prefix)
    n_params = sum(p.numel() for p in vit.parameters())
    assert abs(n_params / 1e6 - millions) / millions < 0.035, f"{n_params / 1e6:.1f} M parameters"
    assert tuple(feats.shape) == (1, fm.n_features)
    full = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in small.items()} == {k: s for k, s in full.items()
                                                           if not k.startswith("blocks.") or k.startswith("blocks.0.")}


def test_a_cache_copied_from_another_machine_loads_with_hf_hub_offline(hf_env, hub, timm_weights):
    """The cache layout huggingface_hub writes (``models--org--name/{blobs,snapshots/<commit>,
    refs/main}``), filled by hand, loads with ``HF_HUB_OFFLINE=1`` and no endpoint."""
    state = serve_foundation(hub, timm_weights, "h-optimus-1")
    repo_dir = hf_env.cache / "models--bioptimus--H-optimus-1"
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for filename, data in hub.repos["bioptimus/H-optimus-1"].items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    hub.repos.clear()
    hf_env.set(endpoint=f"http://127.0.0.1:{_closed_port()}", offline=True)
    encoder = probe.linear_probe(GENES, pretrained=True, encoder="h-optimus-1", timm_kwargs={"depth": 1}).encoder
    assert_loaded(encoder.model, state)
    assert torch.allclose(encoder.normalize.mean.ravel(), torch.tensor(HOPTIMUS["mean"]))
    assert not hub.requests


# ---------------------------------------------------------------------------------------------
# Refusals: one message naming the model and the fix, nothing half-written
# ---------------------------------------------------------------------------------------------


def refused(call, *needles: str, files=lambda: set()) -> str:
    before = files()
    t0 = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        call()
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    print(message)  # shown with pytest -s
    for needle in needles:
        assert needle in message, f"{needle!r} missing from: {message}"
    assert "\n" not in message.strip(), "one message, one line"
    left = sorted(files() - before)
    assert not left, f"files left behind: {left}"
    assert elapsed < 10, f"took {elapsed:.1f} s"
    return message


def test_gated_model_without_a_token_says_log_in_and_request_access(hub, hf_env, timm_weights):
    serve_foundation(hub, timm_weights, "uni")
    hub.gated["MahmoodLab/uni"] = {"granted-token"}
    refused(lambda: probe.linear_probe(GENES, pretrained=True, encoder="uni"),
            "MahmoodLab/uni", "401", "huggingface-cli login", "HF_TOKEN", "Request access",
            f"{hub.url}/MahmoodLab/uni", files=hf_env.files)
    assert hub.requests and all(auth is None for _, _, auth in hub.requests)


def test_gated_model_with_a_token_without_access_says_request_access(hub, hf_env, timm_weights, monkeypatch):
    serve_foundation(hub, timm_weights, "uni2-h")
    hub.gated["MahmoodLab/UNI2-h"] = {"granted-token"}
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    refused(lambda: probe.linear_probe(GENES, pretrained=True, encoder="uni2-h"),
            "MahmoodLab/UNI2-h", "403", "Request access", f"{hub.url}/MahmoodLab/UNI2-h", files=hf_env.files)
    assert any(auth == "Bearer hf_not_granted" for _, _, auth in hub.requests), "the token was sent"
    monkeypatch.setenv("HF_TOKEN", "granted-token")  # with access, the same call loads
    probe.linear_probe(GENES, pretrained=True, encoder="uni2-h", timm_kwargs={"depth": 1})


def test_offline_mode_with_an_empty_cache_names_the_cache_to_set(hub, hf_env, timm_weights):
    serve_foundation(hub, timm_weights, "h-optimus-0")
    hf_env.set(offline=True)
    message = refused(lambda: probe.linear_probe(GENES, pretrained=True, encoder="h-optimus-0"),
                      "bioptimus/H-optimus-0", "HF_HUB_OFFLINE", str(hf_env.cache), "HF_HOME",
                      files=hf_env.files)
    assert "pretrained=False" in message
    assert not hub.requests, "offline: nothing asked of the hub"


def test_unreachable_endpoint_fails_at_once(hf_env):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    hf_env.set(endpoint=endpoint)
    refused(lambda: models.build("bleep", GENES, pretrained=True), "resnet50", endpoint, "cannot be reached",
            "HF_HOME", files=hf_env.files)
    refused(lambda: probe.linear_probe(GENES, pretrained=True, encoder="virchow2"), "paige-ai/Virchow2",
            endpoint, "HF_HOME", files=hf_env.files)


def test_hub_weights_of_the_wrong_shape_name_the_model_its_card_and_the_cache(hub, hf_env, timm_weights):
    serve_foundation(hub, timm_weights, "uni")
    wrong = timm_weights("vit_base_patch16_224", num_classes=0, depth=1)  # 768 wide, not ViT-L's 1024
    hub.repos["MahmoodLab/uni"]["model.safetensors"] = safetensors_bytes(wrong)
    folder = hf_env.cache / "models--MahmoodLab--uni"
    refused(lambda: probe.linear_probe(GENES, pretrained=True, encoder="uni", timm_kwargs={"depth": 1}),
            "hf-hub:MahmoodLab/uni", "size mismatch", "model card", str(folder), "HF_HOME")
    # the downloaded files are whole (the hub's own cache entries), no unfinished file or lock
    cached = {p.name for p in hf_env.cache.rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert cached == {"config.json", "model.safetensors"}
    assert not [p for p in hf_env.cache.rglob("*") if p.name.endswith((".incomplete", ".lock"))]


def test_a_torchvision_file_of_the_wrong_shape_says_delete_it_or_set_torch_home(tmp_path, monkeypatch):
    from torchvision import models as tv

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = tv.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    path = encoders.weights_cache_path(weights)
    path.parent.mkdir(parents=True)
    torch.save(tv.shufflenet_v2_x1_0(weights=None).state_dict(), path)  # x1.0 under x0.5's name
    stamp = (path.stat().st_size, path.stat().st_mtime_ns)
    files = lambda: {p for p in tmp_path.rglob("*") if p.is_file()}  # noqa: E731
    refused(lambda: models.build("shufflenet", GENES, pretrained=True), str(path), "shufflenet_v2_x0_5",
            "size mismatch", "Delete", "TORCH_HOME", files=files)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == stamp, "the user's file is left as it was"
    path.write_bytes(b"PK\x03\x04 truncated")  # an unfinished copy
    refused(lambda: models.build("shufflenet", GENES, pretrained=True), str(path), "Delete", "TORCH_HOME",
            files=files)


def test_no_network_and_no_torchvision_file_names_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(encoders, "_reachable", lambda url, timeout=3.0: False)
    refused(lambda: models.build("stnet", GENES, pretrained=True), "DenseNet121", "densenet121-a639ec97.pth",
            "TORCH_HOME", "pretrained=False", files=lambda: set(tmp_path.rglob("*")))


# ---------------------------------------------------------------------------------------------
# A fresh process configured by the environment variables alone
# ---------------------------------------------------------------------------------------------

SCRIPT = """
import sys, torch
from safetensors.torch import load_file
from spared_utils import models
from spared_utils.models.encoders import PretrainedWeightsUnavailable
served = load_file(sys.argv[1])
encoder = models.build("linear_probe", 4, pretrained=True, encoder="resnet18").encoder
print("equal", all(torch.equal(v, served[k]) for k, v in encoder.model.state_dict().items()))
try:
    models.build("linear_probe", 4, pretrained=True, encoder="uni")
except PretrainedWeightsUnavailable as err:
    print("refused", err)
"""


def test_a_fresh_process_reads_hf_endpoint_and_hf_home(hub, tmp_path, timm_weights):
    state = serve_timm(hub, timm_weights, "resnet18")
    served = tmp_path / "served.safetensors"
    served.write_bytes(hub.repos["timm/resnet18.a1_in1k"]["model.safetensors"])
    hub.gated["MahmoodLab/uni"] = set()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(served)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "equal True" in out.stdout
    assert "refused" in out.stdout and "MahmoodLab/uni" in out.stdout and "huggingface-cli login" in out.stdout
    assert (tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k" / "refs" / "main").read_text() == COMMIT
    assert len(state) > 0
