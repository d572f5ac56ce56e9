"""Every remote dataset of the registry, downloaded from a loopback mirror, extracted, read and curated.

``tests/mirror_fixtures.py`` writes a miniature of each publication's downloads in the layout
the authors' reader code expects; a session-wide HTTP server on 127.0.0.1 serves them, and
``SPARED_MIRROR`` (the one setting) sends every download there. The registry used is
``data/datasets.yml`` with one change: where it pins a checksum (the 10x files), the checksum of
the miniature file stands in for the real one, so the checksum path is exercised as well.
"""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import yaml

from spared_utils import datasets, readers, registry
from tests.mirror_fixtures import BUILDERS, REGISTRY_LAYOUT, Mirror, build_mirror

pytestmark = pytest.mark.slow

SPECS = registry.registry()
REMOTE = [ds for ds, spec in SPECS.items() if spec.source.kind == "remote"]


class _Handler(SimpleHTTPRequestHandler):
    requested: list[str]

    def log_message(self, *args):  # quiet; the paths asked for are recorded instead
        pass

    def send_head(self):
        self.requested.append(unquote(self.path.split("?")[0]).removeprefix("/spared/"))
        return super().send_head()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """(built mirror, its URL prefix, the registry file with the miniature's checksums, requests)."""
    base = tmp_path_factory.mktemp("mirror")
    built: Mirror = build_mirror(base / "files" / "spared", SPECS.values())
    doc = yaml.safe_load(registry.registry_path().read_text(encoding="utf-8"))
    for entry in doc["datasets"].values():
        for item in entry["source"].get("files") or []:
            if item.get("sha256"):
                item["sha256"] = built.sha256[item["path"]]
    registry_file = base / "datasets.yml"
    registry_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    requested: list[str] = []
    handler = type("Handler", (_Handler,), {"requested": requested})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(base / "files")))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield built, f"http://127.0.0.1:{server.server_address[1]}/spared", registry_file, requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_every_remote_dataset_has_a_miniature_and_the_registry_says_so():
    assert len(REMOTE) == 28  # the paper's 26 and the authors' two later additions
    assert sum(SPECS[ds].in_paper for ds in REMOTE) == 26
    for ds in REMOTE:
        publication = SPECS[ds].publication["key"]
        assert publication in BUILDERS, ds
        expected = False if publication in REGISTRY_LAYOUT else "reader-code"
        assert SPECS[ds].source.layout_verified == expected, (ds, SPECS[ds].source.layout_verified)


@pytest.mark.parametrize("dataset_id", REMOTE)
def test_remote_dataset_loads_and_curates_from_the_mirror(dataset_id, mirror, monkeypatch):
    built, prefix, registry_file, requested = mirror
    monkeypatch.setattr(registry, "registry_path", lambda: registry_file)
    monkeypatch.setenv("SPARED_MIRROR", prefix)
    spec = registry.get_spec(dataset_id)
    adata = datasets.load(dataset_id, stage="curated", progress=False)

    asked = set(requested)
    assert {f.path for f in spec.source.files} <= asked, "every file came from the mirror"
    assert sorted(adata.obs["slide_id"].cat.categories) == sorted(spec.slides)
    assert adata.n_vars == spec.n_genes
    assert adata.uns["dataset_id"] == dataset_id
    for slide, split in spec.slide_split.items():
        rows = (adata.obs["slide_id"] == slide).to_numpy()
        assert rows.sum() > 0, f"{slide}: no spot left"
        assert set(adata.obs.loc[rows, "split"]) == {split}
        assert set(adata.obs.loc[rows, "patient"]) == {spec.slide_patient[slide]}
        truth = built.slides[dataset_id][slide]
        index = {b: i for i, b in enumerate(truth.barcodes)}
        spots = np.array([index[b] for b in adata.obs.loc[rows, "barcode"]])
        genes = np.array([list(truth.genes.ids).index(g) for g in adata.var_names])
        expected = truth.counts[spots][:, genes].toarray()
        np.testing.assert_allclose(np.asarray(adata.layers["counts"][rows]), expected, rtol=1e-5)
        np.testing.assert_allclose(adata.obsm["spatial"][rows], truth.spatial()[spots])
        library = adata.uns["spatial"][slide]
        assert library["images"]["hires"].ndim == 3
        assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
            truth.scalefactors["spot_diameter_fullres"])
        image = readers.read_image(Path(library["metadata"]["source_image_path"]))
        assert image.shape == truth.fullres.shape and image.dtype == np.uint8
        # TIFFs (8 or 16 bits) come back exactly, JPEGs within compression noise
        assert np.abs(image.astype(int) - truth.fullres.astype(int)).mean() < 3.0
