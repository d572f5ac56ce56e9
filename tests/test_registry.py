"""The dataset registry (data/datasets.yml), gene-id harmonisation, datasets.load and Supp. Table 1."""

from __future__ import annotations

import json
from dataclasses import fields, replace
import re
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from spared_utils import datasets, paths, preprocess, sources
from spared_utils import registry
from spared_utils.registry import parse_registry
from spared_utils.datasets import RegistryError, UnknownDatasetError
from tests.conftest import TINY

# Facts of the paper (its Supp. Table 1 and the authors' metadata table), not read from the registry.
PAPER_TOTALS = {"datasets": 26, "slides": 105, "patients": 35, "spots": 308_843, "human": 14, "mouse": 12,
                "with_test": 11, "32_genes": 6}


@pytest.fixture(scope="module")
def specs():
    return datasets.registry()


def paper_specs(specs):
    return [s for s in specs.values() if s.in_paper]


def test_paper_totals(specs):
    paper = paper_specs(specs)
    assert len(paper) == PAPER_TOTALS["datasets"]
    assert sum(s.n_slides for s in paper) == PAPER_TOTALS["slides"]
    assert sum(s.n_patients for s in paper) == PAPER_TOTALS["patients"]
    assert sum(s.paper.spots for s in paper) == PAPER_TOTALS["spots"]
    assert sum(s.organism == "human" for s in paper) == PAPER_TOTALS["human"]
    assert sum(s.organism == "mouse" for s in paper) == PAPER_TOTALS["mouse"]
    assert sum(bool(s.splits.get("test")) for s in paper) == PAPER_TOTALS["with_test"]
    assert sum(s.n_genes == 32 for s in paper) == PAPER_TOTALS["32_genes"]
    assert max(paper, key=lambda s: s.paper.spots).abbreviation == "VMB"  # largest: 43,804 spots


def test_registry_agrees_with_published_statistics(specs):
    for spec in paper_specs(specs):
        assert spec.n_slides == spec.paper.slides, spec.id
        assert spec.n_patients == spec.paper.patients, spec.id
        assert spec.n_genes == spec.paper.genes, spec.id
        assert spec.task == spec.paper.task, spec.id


@pytest.mark.shared
def test_ids_and_figure_abbreviations_match_the_compiled_table(specs):
    table = (Path(__file__).resolve().parents[2] / "shared" / "paper" / "datasets.md")
    text = table.read_text()
    listed = dict(re.findall(r"^\| (\w+) \(([0-9A-Z]+)\) \|", text, flags=re.M))
    assert {s.id: s.abbreviation for s in paper_specs(specs)} == listed


def test_shared_parameters_and_interface(specs):
    for spec in specs.values():
        assert spec.curation.cell_max_counts == 1e6 and spec.curation.gene_min_counts == 10
        assert spec.curation.real_data_percentage == 0.7 and spec.patch_scale == 1.0
        # 224 px everywhere but the fixture the authors' code made with 32 px patches (kept small)
        assert spec.patch_size == (32 if spec.id == "authors_tiny" else 224)
        assert spec.curation.combat_key in ("slide_id", "patient")
        assert set(spec.splits) <= {"train", "val", "test"} and spec.splits["train"]
    assert specs["mirzazadeh_human_small_intestine"].curation.cell_min_counts == 800
    assert [s.id for s in specs.values() if s.curation.cell_min_counts != 10] == ["mirzazadeh_human_small_intestine"]
    assert all(s.curation.hex_geometry for s in paper_specs(specs))
    assert specs["her2st_patient_c"].curation.hex_geometry is False
    vmb = specs["vicari_mouse_brain"]
    assert vmb.curation.combat_key == "patient" and vmb.n_patients == 4 and vmb.splits["test"] == ["V11T17-101_A1", "V11T17-101_B1"]


def test_synthetic_entries(specs):
    syn, tiny = specs["synthetic"], specs["synthetic_tiny"]
    assert syn.generator == {"seed": 0} and syn.n_genes == 32 and syn.curation.hex_geometry and not syn.in_paper
    assert tiny.generator == {"seed": 0, **TINY} and tiny.n_genes == 16
    for spec in (syn, tiny):
        assert spec.splits == {"train": ["SYN_A1", "SYN_B1"], "val": ["SYN_C1"], "test": ["SYN_D1"]}
        assert spec.slide_patient == {"SYN_A1": "P1", "SYN_B1": "P1", "SYN_C1": "P2", "SYN_D1": "P2"}
        assert spec.curation.combat_key == "slide_id" and spec.source.kind == "synthetic"


def test_real_sample_entries_point_at_existing_folders(specs, shared_real, monkeypatch):
    monkeypatch.setenv("SPARED_REAL_DATA_DIR", str(shared_real))
    local = [s for s in specs.values() if s.source.kind == "local"]
    assert {s.id for s in local} == {"her2st_patient_c", "coexpress_mouse_visium", "squidpy_visium_fixture",
                                     "stlearn_breast_subset"}
    for spec in local:
        root = sources.prepare_source(spec)
        for slide in spec.slides:
            assert sources.slide_files(spec, slide, root)["slide_dir"].is_dir()


def test_remote_files_are_well_formed(specs):
    for spec in specs.values():
        if spec.source.kind != "remote":
            continue
        assert spec.source.files and "slide_dir" in spec.source.layout
        for item in spec.source.files:
            assert all(u.startswith("https://") for u in item.urls), (spec.id, item.urls)
            assert item.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", item.sha256)


def test_10x_checksums_match_squidpys_registry(specs):
    """The 10x files' SHA-256 were copied from squidpy's dataset registry: check every one."""
    import importlib.util

    package = importlib.util.find_spec("squidpy")  # locate the file without importing squidpy (slow)
    registry_file = Path(package.submodule_search_locations[0]) / "datasets" / "datasets.yaml"
    if not registry_file.is_file():
        pytest.skip("this squidpy has no datasets.yaml registry")
    squidpy_files = {}
    for name, entry in yaml.safe_load(registry_file.read_text())["datasets"].items():
        for f in entry.get("files", []):
            squidpy_files[(name, f["name"])] = f["sha256"]
    checked = 0
    for spec in specs.values():
        if not spec.id.startswith("10xgenomic"):
            continue
        for item in spec.source.files:
            assert item.sha256 == squidpy_files[(item.slide, Path(item.path).name)]
            checked += 1
    assert checked == 5 * 2 * 3  # 5 datasets × 2 slides × (matrix, spatial.tar.gz, image.tif)


# ------------------------------------------------------------------------------------------------
# Validation errors name the line
# ------------------------------------------------------------------------------------------------

VALID = textwrap.dedent("""\
    schema_version: 1
    defaults:
      cell_min_counts: 10
      cell_max_counts: 1000000
      gene_min_counts: 10
      gene_max_counts: 1000000
      real_data_percentage: 0.7
      patch_scale: 1.0
      patch_size: 224
      hex_geometry: true
      in_paper: false
      pipeline_ready: true
    publications:
      me: {citation: "Me et al."}
    datasets:
      toy:
        publication: me
        organism: human
        tissue: brain
        n_genes: 32
        combat_key: slide_id
        splits:
          train: [S1, S2]
          val: [S3]
        patients:
          P1: [S1, S2, S3]
        source:
          kind: remote
          format: spaceranger
          files:
            - path: x/a.zip
              urls: [https://example.org/a.zip]
              sha256: null
              extract: zip
          layout:
            slide_dir: "x/a/{slide_id}"
    """)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def parse(text: str):
    return parse_registry(text, "test.yml")


def test_minimal_registry_parses():
    spec = parse(VALID)["toy"]
    assert spec.slides == ["S1", "S2", "S3"] and spec.task == "intra-patient"
    assert spec.source.files[0].extract == "zip" and spec.line == line_of(VALID, "  toy:")


@pytest.mark.parametrize(("written", "value"), [("", False), ("false", False), ("reader-code", "reader-code"),
                                                ("true", True)])
def test_layout_verified_takes_false_reader_code_or_true(written, value):
    text = VALID.replace("      format: spaceranger",
                         "      format: spaceranger" + (f"\n      layout_verified: {written}" if written else ""))
    assert parse(text)["toy"].source.layout_verified == value


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        ("      train: [S1, S2]", "      trian: [S1, S2]", "trian:", r"unknown key 'trian'; did you mean 'train'"),
        ("    n_genes: 32", "    n_gene: 32", "n_gene:", r"unknown key 'n_gene'; did you mean 'n_genes'"),
        ("      P1: [S1, S2, S3]", "      P1: [S1, S2, S4]", "P1:", r"slide 'S4', which is in no split"),
        ("      val: [S3]", "      val: [S2]", "val:", r"'S2' is in both 'train' and 'val'"),
        ("    combat_key: slide_id", "    combat_key: slide", "combat_key:", r"did you mean 'slide_id'"),
        ("    organism: human", "    organism: humna", "organism:", r"organism 'humna' is not one of"),
        ("          sha256: null", "          sha256: abc", "sha256:", r"sha256 must be 64"),
        ("    publication: me", "    publication: you", "publication:", r"publication 'you' is not defined"),
        ("          extract: zip", "          extract: rar", "extract:", r"extract 'rar' is not one of"),
        ("    n_genes: 32", "    n_genes: -3", "n_genes:", r"n_genes must be an integer >= 1"),
        ("      format: spaceranger", "      format: spaceranger\n      layout_verified: reader_code",
         "layout_verified:", r"layout_verified must be one of false, 'reader-code', true; got 'reader_code'"),
    ],
)
def test_typos_give_an_error_naming_the_line(old, new, needle, expected):
    assert old in VALID
    text = VALID.replace(old, new)
    with pytest.raises(RegistryError, match=expected) as err:
        parse(text)
    assert f"test.yml:{line_of(text, needle)}:" in str(err.value)


@pytest.mark.parametrize(
    ("old", "where", "expected"),
    [
        ("    tissue: brain", "dataset 'toy'",
         [f.name for f in fields(registry.DatasetSpec) if f.name not in ("id", "curation", "line")]
         + [f.name for f in fields(registry.PipelineParams) if f.name not in ("n_rings", "slide_key")]),
        ("  in_paper: false", "defaults", ["cell_min_counts", "patch_size", "in_paper", "pipeline_ready"]),
        ("      kind: remote", "source", [f.name for f in fields(registry.SourceSpec)]),
        ("          sha256: null", "file", [f.name for f in fields(registry.RemoteFile)]),
    ],
)
def test_unknown_key_without_a_close_match_is_refused_naming_the_valid_keys(old, where, expected):
    """A key close to none lists every key the place accepts: the fields of the dataclass it fills."""
    assert old in VALID
    indent = old[: len(old) - len(old.lstrip())]
    text = VALID.replace(old, f"{old}\n{indent}zzzz_unrelated: 1")
    with pytest.raises(RegistryError, match=r"unknown key 'zzzz_unrelated'; allowed: ") as err:
        parse(text)
    message = str(err.value)
    assert where in message and f"test.yml:{line_of(text, 'zzzz_unrelated')}:" in message
    allowed = message.split("allowed: ")[1].split(", ")
    assert set(expected) <= set(allowed), f"not named: {set(expected) - set(allowed)}"


def test_fixed_pipeline_parameters_are_not_dataset_keys():
    """The median's rings and the slide column are shared by every dataset: an entry cannot set them."""
    for key in ("n_rings", "slide_key"):
        with pytest.raises(RegistryError, match=rf"unknown key '{key}'"):
            parse(VALID.replace("    tissue: brain", f"    tissue: brain\n    {key}: 2"))


def test_duplicate_dataset_id_is_reported_with_both_lines():
    entry = VALID.split("datasets:\n", 1)[1]
    text = VALID + entry
    first = line_of(VALID, "  toy:")
    with pytest.raises(RegistryError, match=rf"key 'toy' appears twice \(first at line {first}\)") as err:
        parse(text)
    assert f"test.yml:{len(VALID.splitlines()) + 1}:" in str(err.value)


def test_slide_without_patient_and_bad_yaml():
    with pytest.raises(RegistryError, match=r"slides \['S3'\] are assigned to no patient"):
        parse(VALID.replace("P1: [S1, S2, S3]", "P1: [S1, S2]"))
    with pytest.raises(RegistryError, match=r"test.yml:\d+: not valid YAML"):
        parse(VALID.replace("train: [S1, S2]", "train: [S1, S2"))


def test_unknown_dataset_id_names_the_registry_and_close_ids():
    with pytest.raises(UnknownDatasetError) as err:
        datasets.get_spec("synthetic_tinny")
    message = str(err.value)
    assert "'synthetic_tiny'" in message and str(registry.registry_path()) in message
    with pytest.raises(UnknownDatasetError):
        datasets.load("no_such_dataset")


def test_registry_returns_copies():
    first = datasets.registry()
    first["synthetic"].splits["train"].append("X")
    assert datasets.registry()["synthetic"].splits["train"] == ["SYN_A1", "SYN_B1"]


# ------------------------------------------------------------------------------------------------
# Gene identifiers
# ------------------------------------------------------------------------------------------------


def toy_genes(names, counts, symbols=None):
    a = ad.AnnData(X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)),
                   var=pd.DataFrame(index=names))
    if symbols is not None:
        a.var["gene_symbol"] = symbols
    a.layers["counts"] = a.X.copy()
    return a


def test_harmonise_human_maps_strips_and_merges():
    # A1BG is ENSG00000121410 (HGNC); ENSG00000121410 also appears as an id: they merge (summed).
    a = toy_genes(["ENSG00000243485.5", "A1BG", "NOT_A_GENE", "ENSG00000121410"],
                  [[1, 2, 3, 4], [5, 6, 7, 8]])
    out = preprocess.harmonise_gene_ids(a, "human")
    assert list(out.var_names) == ["ENSG00000243485", "ENSG00000121410"]
    assert out.layers["counts"].toarray().tolist() == [[1, 2 + 4], [5, 6 + 8]]
    assert out.X.toarray().tolist() == [[1, 6], [5, 14]]
    assert out.var.loc["ENSG00000121410", "gene_symbol"] == "A1BG"
    info = out.uns["gene_id_harmonisation"]
    assert (info["n_symbols_mapped"], info["n_dropped_unmapped"], info["n_merged_duplicates"]) == (1, 1, 1)


def test_harmonise_mouse_duplicated_symbol_is_deterministic():
    table = pd.read_csv(paths.data_dir() / "annotations" / "ensembl_to_symbol_mouse.tsv.gz", sep="\t")
    multi = table.groupby("Gene name")["Gene stable ID"].nunique()
    symbol = multi[multi > 1].index[0]
    chosen = preprocess.symbol_to_ensembl("mouse")[symbol]
    assert chosen in set(table.loc[table["Gene name"] == symbol, "Gene stable ID"])
    a = toy_genes([symbol, symbol, "ENSMUSG00000051951"], [[1, 2, 3]], symbols=[symbol, symbol, "Xkr4"])
    out = preprocess.harmonise_gene_ids(a, "mouse")
    assert list(out.var_names) == [chosen, "ENSMUSG00000051951"]
    assert out.layers["counts"].toarray().tolist() == [[3, 3]]  # the repeated symbol is summed


def test_harmonise_synthetic_keeps_ids_and_gene_lengths(tiny_adata):
    out = preprocess.harmonise_gene_ids(tiny_adata, "synthetic")
    assert list(out.var_names) == list(tiny_adata.var_names)
    assert np.array_equal(out.var["gene_length"], tiny_adata.var["gene_length"])
    assert (out.layers["counts"] != tiny_adata.layers["counts"]).nnz == 0


# ------------------------------------------------------------------------------------------------
# load()
# ------------------------------------------------------------------------------------------------


def test_load_synthetic_raw_reads_back_the_generated_data(tiny_adata, tmp_path):
    adata = datasets.load("synthetic_tiny", stage="raw", cache_dir=tmp_path, progress=False)
    assert (tmp_path / "synthetic_tiny" / "raw" / "SYN_A1" / "filtered_feature_bc_matrix.h5").is_file()
    assert list(adata.obs_names) == list(tiny_adata.obs_names)
    assert (adata.layers["counts"] != tiny_adata.layers["counts"]).nnz == 0
    assert (adata.X != tiny_adata.layers["counts"]).nnz == 0
    assert np.allclose(adata.obsm["spatial"], tiny_adata.obsm["spatial"])
    assert np.array_equal(adata.var["gene_length"], tiny_adata.var["gene_length"])
    for key in ("slide_id", "split", "patient", "array_row", "array_col"):
        assert (adata.obs[key].astype(str).to_numpy() == tiny_adata.obs[key].astype(str).to_numpy()).all(), key
    lib = adata.uns["spatial"]["SYN_C1"]
    assert np.array_equal(lib["images"]["hires"], tiny_adata.uns["spatial"]["SYN_C1"]["images"]["hires"])
    assert np.array_equal(lib["images"]["fullres"], tiny_adata.uns["spatial"]["SYN_C1"]["images"]["fullres"])
    assert lib["scalefactors"]["spot_diameter_fullres"] == tiny_adata.uns["spatial"]["SYN_C1"]["scalefactors"]["spot_diameter_fullres"]


def test_load_processed_is_cached_and_invalidated(tmp_path, monkeypatch):
    adata = datasets.load("synthetic_tiny", cache_dir=tmp_path, progress=False)
    path = paths.processed_dir() / "synthetic_tiny" / "adata.h5ad"
    assert path.is_file() and adata.n_vars == 16 and "c_d_log1p" in adata.layers and "mask" in adata.layers
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline must not run again")

    monkeypatch.setattr(datasets, "run_pipeline", refuse)
    again = datasets.load("synthetic_tiny", cache_dir=tmp_path, progress=False)
    assert np.array_equal(again.layers["c_d_log1p"], adata.layers["c_d_log1p"])
    # a changed curation parameter makes the cached file stale: the pipeline runs again
    spec = datasets.get_spec("synthetic_tiny")
    changed = replace(spec, curation=replace(spec.curation, n_genes=8))
    monkeypatch.setattr(datasets, "get_spec", lambda dataset_id, path=None: changed)
    with pytest.raises(AssertionError, match="must not run again"):
        datasets.load("synthetic_tiny", cache_dir=tmp_path, progress=False)


def test_failed_curation_leaves_no_processed_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(datasets, "run_pipeline", fail)
    with pytest.raises(RuntimeError, match="boom"):
        datasets.load("synthetic_tiny", cache_dir=tmp_path, progress=False)
    folder = paths.processed_dir() / "synthetic_tiny"
    # the lock that serialised the curation may stay (an empty file); no data file may
    left = [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] if folder.exists() else []
    assert left == [], f"a failed curation left {left}"


def test_datasets_that_are_not_counts_refuse_curation():
    with pytest.raises(ValueError, match="cannot be curated.*z-scored"):
        datasets.load("stlearn_breast_subset", progress=False)


def test_missing_local_folder_names_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SPARED_REAL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere" / "her2st_patient_c"))):
        datasets.load("her2st_patient_c", stage="raw", progress=False)


def test_remote_layout_is_resolved_after_download(tmp_path):
    """A downloaded archive laid out as in the registry is found slide by slide (no network)."""
    spec = datasets.get_spec("erickson_human_prostate_cancer_p1")
    slide = "P1_H2-5"
    base = tmp_path / "mendeley" / "svw96g68dv-4" / "Spatially resolved (top folder)"
    counts_dir = base / "Count_matrices" / "Patient 1" / "Visium_with_annotation" / "H2_5"
    counts_dir.mkdir(parents=True)
    hires = base / "10x_spaceranger_tissue_highres_images" / "Patient 1" / "H2_5_tissue_hires_image.png"
    full = base / "Histological_images" / "Patient_1" / "Visium" / "H2_5.jpg"
    for f in (hires, full):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    files = sources.slide_files(spec, slide, tmp_path)
    assert files == {"slide_dir": counts_dir, "hires": hires, "fullres": full}
    with pytest.raises(FileNotFoundError, match=r"slide 'P1_H1-5': no slide_dir matches"):
        sources.slide_files(spec, "P1_H1-5", tmp_path)


# ------------------------------------------------------------------------------------------------
# Supplementary Table 1
# ------------------------------------------------------------------------------------------------


def test_summary_table_paper_columns():
    table = datasets.summary_table()
    assert len(table) == 26 and table.index[0] == "vicari_mouse_brain"
    assert table["spots_paper"].sum() == PAPER_TOTALS["spots"]
    assert table["slides"].sum() == PAPER_TOTALS["slides"]
    assert (table[["train", "val", "test"]].sum(axis=1) == table["slides"]).all()
    assert table["spots_ours"].isna().all()
    assert table.loc["10xgenomic_mouse_brain_sagittal_posterior", "abbreviation"] == "10XGMBSP"


def test_summary_table_with_a_processed_dataset(tmp_path):
    curated = datasets.load("synthetic_tiny", cache_dir=tmp_path, progress=False)
    table = datasets.summary_table(processed_ids=["synthetic_tiny"])
    row = table.loc["synthetic_tiny"]
    assert len(table) == 27
    assert row["spots_ours"] == curated.n_obs and row["genes_ours"] == 16 and row["slides_ours"] == 4
    expected = 100 * (1 - np.asarray(curated.layers["mask"]).mean())
    assert row["missing_pct_ours"] == pytest.approx(expected, abs=0.05)
    assert np.isnan(row["spots_paper"])


def test_synthetic_files_are_regenerated_for_a_new_generator_version(tmp_path, monkeypatch):
    from spared_utils import synthetic

    spec = datasets.get_spec("synthetic_tiny")
    root = sources.prepare_source(spec, tmp_path)
    h5 = root / "SYN_A1" / "filtered_feature_bc_matrix.h5"
    first = h5.stat().st_mtime_ns
    assert sources.prepare_source(spec, tmp_path) == root and h5.stat().st_mtime_ns == first  # reused
    before = datasets.spec_fingerprint(spec)
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    assert datasets.spec_fingerprint(spec) != before  # curated copies are invalidated too
    sources.prepare_source(spec, tmp_path)
    assert h5.stat().st_mtime_ns != first
    assert json.loads((root / "generator.json").read_text())["version"] == synthetic.GENERATOR_VERSION


def test_the_embedded_suite_differs_in_one_property_each(specs):
    """Six generated datasets (never mistaken for SpaRED ones) for the cross-dataset analysis."""
    suite = {k: v for k, v in specs.items() if k.startswith("synsuite_")}
    assert len(suite) == 6 and not any(s.in_paper for s in suite.values())
    assert all(s.source.kind == "synthetic" and s.organism == "synthetic" for s in suite.values())
    assert len({s.generator["seed"] for s in suite.values()}) == 6
    assert suite["synsuite_128genes"].n_genes == 128 and suite["synsuite_base"].n_genes == 32
    assert suite["synsuite_small"].generator["n_rows"] < 40
    assert suite["synsuite_dropout"].generator["dropout_scale"] > 0.3
    assert suite["synsuite_intra"].n_patients == 1 and suite["synsuite_base"].n_patients == 2
    assert len(suite["synsuite_six_slides"].splits["train"]) == 4


def test_dropout_scale_raises_the_share_of_zero_counts():
    from spared_utils import synthetic

    small = {"n_rows": 12, "n_cols": 24, "n_genes": 64, "n_slides": 2}
    zeros = []
    for scale in (0.3, 0.9):
        x = synthetic.make_dataset(seed=4, dropout_scale=scale, **small).layers["counts"]
        x = x.toarray() if hasattr(x, "toarray") else x
        zeros.append(float((x == 0).mean()))
    assert zeros[1] > zeros[0] + 0.02
    default = synthetic.make_dataset(seed=4, **small).layers["counts"]
    same = synthetic.make_dataset(seed=4, dropout_scale=0.3, **small).layers["counts"]
    assert (default != same).sum() == 0, "the default keeps the generated data as they were"
