"""Benchmark of the predictors: size, speed, retrieval and slide memory at SpaRED scale, quality.

Prints five tables:

1. **Trainable parameters** of every predictor at 32 and 128 genes (from its record),
   next to estimates from the official configurations and the paper's ordering (Fig 4b:
   Hist2ST most, ShuffleNet fewest), the slide models also at SpaRED's 224 px patches (the
   configuration that explains Fig 4b's ordering).
2. **Throughput** on this machine: loader-only samples/s (patch store → augmented uint8
   batches, with 0 and ``--workers`` worker processes) against model-step samples/s
   (forward + backward + Adam on one batch) and evaluation samples/s (STNet: 8 views).
3. **Quality** on the embedded dataset: each predictor trained in ``--scenario`` (default raw and
   completed, the paper's pair; ``all`` adds masked and median) at its record's budget
   (`--budget cpu`, the chapters' default, or `paper`); validation MSE against the trivial
   predictor (each gene's mean over real training values), and completed − raw.
4. **Retrieval at SpaRED scale**: exact search of ``--retrieval-spots`` (43,804, the largest
   SpaRED dataset) queries against a bank of as many spots, EGN's (2,048-d, L2, k = 6, own
   slide excluded) and BLEEP's (256-d cosine, k = 50, own spot excluded): build and query time
   and the peak resident memory of a child process doing only that.
5. **Slide models' memory**: peak memory of one HisToGene / Hist2ST training step (forward +
   backward) on windows of N spots of the embedded data, fitted by a + bN + cN² (a, b, c ≥ 0)
   and extrapolated to 5,000 spots (SpaRED's largest slides), at the paper's 112 px patches,
   beside what materialised attention scores would take there.

Usage::

    python benchmarks/bench_predictors.py [--dataset synthetic] [--models shufflenet stnet]
        [--quick] [--json out.json] [--threads 2]

Everything runs in a temporary results folder unless ``--out-dir`` is given; the curated dataset
is read from (or written to) the usual processed folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spared_utils import completion, datasets, models, predict  # noqa: E402
from spared_utils.training import autocast, resolve_device, seed_everything, to_device  # noqa: E402

#: Estimates from layer sizes (G = 128; the official configurations) and the paper's ordering (Fig 4b:
#: Hist2ST most trainable parameters, ShuffleNet fewest).
PAPER = {
    "shufflenet": "~0.5 M (fewest)", "stnet": "~7 M", "vit_b": "~86 M", "vit_b_delta": "~86 M",
    "histogene": "~106 M", "hist2st": "~73 M (most)", "egn": "~135 M", "eggn": "~10 M", "bleep": "~25 M",
    "sepal": "~1 M + frozen 86 M", "linear_probe": "(not in the paper)",
}
#: The slide models' width follows their patch size (Hist2ST: dim = (patch / 7)² · 32 / 8); at the
#: 224 px patches SpaRED stores, fed without our resize to 112 px, Hist2ST becomes the largest.
SPARED_PATCH = 224


def parameter_table(names, at_spared_patch: bool = True) -> pd.DataFrame:
    """Trainable parameters at 32 and 128 genes, from each predictor's record (the tests check
    them against the built models), and for the slide models also at SpaRED's 224 px patches
    (built, to count them: Hist2ST is ~740 M parameters, ~3 GB)."""
    rows = []
    for name in names:
        record = models.record(name)
        row = {"model": record.display_name, "params_32_genes": record.n_params_32,
               "params_128_genes": record.n_params_128, "paper": PAPER.get(name, "")}
        if at_spared_patch and record.kind == "slide":
            built = models.build(name, 128, pretrained=False, patch_size=SPARED_PATCH)
            row[f"params_128_at_{SPARED_PATCH}px"] = sum(p.numel() for p in built.parameters() if p.requires_grad)
            del built
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("params_128_genes").reset_index(drop=True)
    table["our_rank"] = table["params_128_genes"].rank(method="min").astype(int)
    return table


def explain_ordering(table: pd.DataFrame) -> list[str]:
    """Sentences comparing our ordering with Fig 4b's (Hist2ST most, ShuffleNet fewest)."""
    trained = table[table["params_128_genes"] > 0]
    fewest, most = trained.iloc[0]["model"], trained.iloc[-1]["model"]
    lines = [f"fewest trainable parameters: {fewest} (Fig 4b: ShuffleNet); most: {most} (Fig 4b: Hist2ST)"]
    col = f"params_128_at_{SPARED_PATCH}px"
    if col in table and most != "Hist2ST" and "Hist2ST" in set(table["model"]):
        h2 = table.set_index("model").loc["Hist2ST"]
        if pd.notna(h2.get(col)):
            rest = trained[trained["model"] != "Hist2ST"]
            others = rest[col].fillna(rest["params_128_genes"]).max()  # HisToGene at 224 px too
            lines.append(
                f"Hist2ST at its official 112 px patches has {int(h2['params_128_genes']):,} (width 1,024); at the "
                f"{SPARED_PATCH} px patches SpaRED stores, fed without resizing, its width is (224/7)²·32/8 = 4,096 and it "
                f"has {int(h2[col]):,}, {h2[col] / others:.1f}× the largest other model: the configuration that "
                f"reproduces Fig 4b's ordering. The book resizes to 112 px, the size of the Hist2ST paper.")
    return lines


def loader_throughput(data: predict.PredictionData, batch_size: int, workers: int, n_batches: int) -> float:
    rows = data.rows("train")
    loader = predict.make_loader(data.dataset(rows, augment=True), batch_size, True, workers, torch.device("cpu"),
                                 seed=0, drop_last=True)
    it = iter(loader)
    next(it)  # start-up (workers fork, first reads) is not counted
    t0 = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        try:
            images, _, _ = next(it)
        except StopIteration:
            it = iter(loader)
            images, _, _ = next(it)
        n += len(images)
    return n / (time.perf_counter() - t0)


def step_throughput(name: str, data: predict.PredictionData, batch_size: int, n_steps: int, device) -> dict:
    """Model-only samples/s on one resident batch, as the training loop runs it: on CUDA with
    bfloat16 autocast and channels-last, synchronised before each clock read."""
    seed_everything(0)
    cuda = device.type == "cuda"
    model = models.build(name, data.n_genes).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    rows = data.rows("train")[:batch_size]
    ds = data.dataset(rows, augment=True)
    images = to_device(torch.stack([ds[i][0] for i in range(len(rows))]), device, channels_last=cuda)
    target = torch.from_numpy(data.target[rows]).to(device)
    mask = torch.from_numpy(data.loss_mask[rows]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def step():
        with autocast(device, True):
            loss = predict.masked_mse_loss(model(images), target, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    sync()
    train_sps = n_steps * len(rows) / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad(), autocast(device, True):
        model(images)
        sync()
        t0 = time.perf_counter()
        for _ in range(max(1, n_steps // 2)):
            model(images)
        sync()
        eval_sps = max(1, n_steps // 2) * len(rows) / (time.perf_counter() - t0)
    return {"train_samples_per_s": train_sps, "eval_samples_per_s": eval_sps}


def quality_table(names, adata, store, dataset: str, out_dir: str, budget: str, overrides: dict,
                  seed: int, device: str, scenarios="both") -> pd.DataFrame:
    """The scenarios of each predictor at its record's ``budget`` (``overrides`` change fields)."""
    rows = []
    for name in names:
        t0 = time.perf_counter()
        spec = predict.RunSpec.make(name, dataset=dataset, scenario=scenarios, budget=budget, out_dir=out_dir,
                                    seed=seed, device=device, progress=False, **overrides)
        chapter = predict.run_chapter(spec, adata=adata, store=store)
        cost = chapter.config.train
        base = chapter.baseline.set_index("split")
        for scenario, run in chapter.runs.items():
            m = run.metrics.set_index("split")
            for split in m.index:
                rows.append({"model": models.display_name(name), "scenario": scenario, "split": split,
                             "mse": m.loc[split, "mse"], "train_mean_mse": base.loc[split, "mse"],
                             "beats_mean": bool(m.loc[split, "mse"] < base.loc[split, "mse"]),
                             "pcc_gene": m.loc[split, "pcc_gene"], "best_iteration": run.train.best_iteration,
                             "iterations": cost.iterations, "batch_size": cost.batch_size,
                             "learning_rate": cost.learning_rate,
                             "train_s": round(run.train.wall_time_s, 1)})
        print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return pd.DataFrame(rows)


def completed_vs_raw(quality: pd.DataFrame) -> pd.DataFrame:
    wide = quality.pivot_table(index=["model", "split"], columns="scenario", values=["mse", "pcc_gene"])
    out = pd.DataFrame({
        "mse_raw": wide[("mse", "raw")], "mse_completed": wide[("mse", "completed")],
        "pcc_raw": wide[("pcc_gene", "raw")], "pcc_completed": wide[("pcc_gene", "completed")],
    })
    out["d_mse"] = out["mse_completed"] - out["mse_raw"]
    out["d_pcc"] = out["pcc_completed"] - out["pcc_raw"]
    return out.reset_index()


def child_measure(fn, *args) -> dict:
    """Run ``fn(*args) -> dict`` in a fresh process and add its peak resident memory (MiB)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _measured(fn, *args) -> dict:
    # ru_maxrss survives fork + exec on Linux (a spawned child reports its parent's peak), so the
    # peak is read from VmHWM after resetting it (clear_refs "5", Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = _vm("VmRSS")
    out = fn(*args)
    out["peak_rss_mib"] = _vm("VmHWM")
    out["rss_before_mib"] = before
    return out


def retrieval_run(kind: str, n: int, threads: int) -> dict:
    """Build and query one retrieval bank of ``n`` random spots (4 slides) with ``n`` queries."""
    import numpy as np

    from spared_utils.models import contrastive, exemplar

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    slides = np.repeat(np.arange(4), -(-n // 4))[:n].astype(str)
    ids = np.arange(n).astype(str)
    t0 = time.perf_counter()
    if kind == "egn":
        feats, expr = torch.randn(n, 2048, generator=gen), torch.randn(n, 128, generator=gen)
        bank = exemplar.ExemplarBank(feats, expr, slides, ids, np.asarray(["train"] * n), metric="l2")
        built = time.perf_counter() - t0
        t1 = time.perf_counter()
        bank.query(feats, 6, exclude_slides=slides, exclude_ids=ids)
    else:
        keys, expr = torch.randn(n, 256, generator=gen), torch.randn(n, 128, generator=gen)
        bank = contrastive.RetrievalBank(keys, expr, ids)
        built = time.perf_counter() - t0
        t1 = time.perf_counter()
        bank.query(torch.randn(n, 256, generator=gen), k=50, exclude_ids=ids)
    return {"model": kind, "spots": n, "build_s": built, "query_s": time.perf_counter() - t1}


def slide_step(name: str, n: int, threads: int, device: str) -> dict:
    """Peak memory of one forward + backward of a slide model on ``n`` spots (random 112 px patches)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = models.build(name, 128).to(dev)
    side = int(np.ceil(np.sqrt(n)))
    rows = torch.arange(n, device=dev) // side
    cols = 2 * (torch.arange(n, device=dev) % side) + rows % 2
    patches = torch.randint(0, 255, (n, 3, 112, 112), dtype=torch.uint8, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with autocast(dev, True):
        loss = model(patches, rows, cols).float().pow(2).mean()
    loss.backward()
    out = {"model": models.display_name(name), "spots": n, "step_s": time.perf_counter() - t0}
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def attention_scores_mib(name: str, n: int) -> float:
    """MiB that *materialised* attention scores would take in one training step over ``n``
    spots: depth × heads × n² float32 values, twice (scores and softmax kept for the backward
    pass), from the builder's default depth and heads. Our models call
    ``scaled_dot_product_attention``, whose fused kernels (flash / memory-efficient, on a GPU)
    do not store them: the figure says what a naive implementation (or the math fallback) needs."""
    import inspect

    params = inspect.signature(models.record(name).builder).parameters
    depth, heads = params["depth"].default, params["heads"].default
    return depth * heads * n * n * 4 * 2 / 2**20


def extrapolate(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """Fit peak memory = a + b·N + c·N² (a, b, c ≥ 0: non-negative least squares) per model,
    predict it at ``n`` spots, and put :func:`attention_scores_mib` at ``n`` beside it (windows
    small enough for a CPU barely show an N² term, so the fit is only a guide)."""
    from scipy.optimize import nnls

    out = []
    col = "peak_cuda_mib" if "peak_cuda_mib" in table else "peak_rss_mib"
    for model, part in table.groupby("model"):
        x = part["spots"].to_numpy(float)
        y = part[col].to_numpy(float)
        scale = x.max()
        coef, _ = nnls(np.stack([np.ones_like(x), x / scale, (x / scale) ** 2], axis=1), y)
        fit = float(coef @ np.array([1.0, n / scale, (n / scale) ** 2]))
        name = {models.display_name(k): k for k in models.NAMES}[model]
        out.append({"model": model, "memory": col, f"fit_mib_at_{n}": round(fit, 1),
                    f"materialised_attention_mib_at_{n}": round(attention_scores_mib(name, n), 1)})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--models", nargs="+", default=list(models.NAMES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the loader measurement")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="batch of the throughput table (0: 16 on a CPU, 256 — the paper's — on a GPU)")
    parser.add_argument("--budget", default="cpu", choices=("cpu", "paper"),
                        help="each predictor's record budget for the quality table (the chapters' defaults)")
    parser.add_argument("--iterations", type=int, default=None, help="override the budget's iterations (all models)")
    parser.add_argument("--eval-spots", type=int, default=None, help="spots per split scored (default: the budget's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="both",
                        help="'both' (raw, completed: the paper's pair), 'all', or one of raw, masked, median, completed")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test of the script)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out-dir", default=None, help="results folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write every table to this JSON file")
    parser.add_argument("--retrieval-spots", type=int, default=43_804, help="bank and query size of table 4")
    parser.add_argument("--slide-spots", type=int, nargs="+", default=[128, 256, 512],
                        help="window sizes measured in table 5")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="bench_predictors_")
    report: dict = {"dataset": args.dataset, "device": str(device), "threads": args.threads,
                    "load_average_start": os.getloadavg()[0], "cpu_count": os.cpu_count()}

    print(f"== dataset {args.dataset}, device {device}, {args.threads} torch threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    adata = completion.ensure(datasets.load(args.dataset, progress=False), args.dataset, "spackle",
                              device=str(device), iterations=20 if args.quick else None)
    store = datasets.patch_store(args.dataset, adata, progress=False)
    raw = predict.prediction_data(adata, store, "raw")
    print(f"   {adata.n_obs} spots × {adata.n_vars} genes, splits "
          f"{ {k: len(v) for k, v in raw.splits.items()} }, loaded in {time.perf_counter() - t0:.1f} s")

    print("\n== 1. Trainable parameters (paper ordering, Fig 4b: Hist2ST most, ShuffleNet fewest)")
    params = parameter_table(args.models)
    print(params.to_string(index=False))
    for line in explain_ordering(params):
        print("   " + line)
    report["parameters"] = params.to_dict("records")

    print("\n== 2. Throughput on this machine (samples/s)")
    bs = args.batch_size or (8 if args.quick else (256 if device.type == "cuda" else 16))
    n_batches = 3 if args.quick else (8 if bs > 64 else 20)
    loader = {w: loader_throughput(raw, bs, w, n_batches) for w in sorted({0, args.workers})}
    thr = []
    for name in [n for n in args.models if models.record(n).kind == "patch"]:
        steps = 1 if args.quick else (2 if name.startswith("vit") else 4)
        r = step_throughput(name, raw, bs, steps, device)
        thr.append({"model": models.display_name(name), "batch": bs, **{k: round(v, 1) for k, v in r.items()},
                    **{f"loader_{w}_workers": round(v, 1) for w, v in loader.items()}})
    thr = pd.DataFrame(thr)
    print(thr.to_string(index=False))
    print("   (loader = patch store → augmented uint8 batch; step = forward + backward + Adam on one batch;"
          " eval = forward in eval mode, STNet averaging 8 views)")
    fastest = thr.loc[thr["train_samples_per_s"].idxmax()]
    workers, loader_sps = max(loader.items(), key=lambda kv: kv[1])
    ratio = loader_sps / max(fastest["train_samples_per_s"], 1e-9)
    print(f"   loader ({workers} workers) / fastest training step ({fastest['model']}): {ratio:.1f}× — data loading "
          f"{'is not' if ratio > 1 else 'IS'} the bottleneck at batch {bs} on {device}")
    report["throughput"] = thr.to_dict("records")
    report["loader_over_fastest_step"] = ratio

    if not args.skip_quality:
        print("\n== 3. Quality on the embedded dataset: validation/test MSE vs the training mean")
        overrides = ({"iterations": 2, "batch_size": 4, "eval_every": 1, "val_spots": 8, "eval_spots": 16}
                     if args.quick else {"iterations": args.iterations, "eval_spots": args.eval_spots})
        quality = quality_table(args.models, adata, store, args.dataset, out_dir, args.budget, overrides,
                                args.seed, str(device), scenarios=args.scenario)
        print(quality.round(4).to_string(index=False))
        val = quality[quality["split"] == "val"]
        for scenario, part in val.groupby("scenario", sort=False):
            behind = part.loc[~part["beats_mean"], "model"].tolist()
            print(f"   {scenario}: below the training mean on validation MSE: {int(part['beats_mean'].sum())} of "
                  f"{len(part)}" + (f" (not: {', '.join(behind)})" if behind else ""))
        report["quality"] = quality.to_dict("records")
        if {"raw", "completed"} <= set(quality["scenario"]):
            cmp = completed_vs_raw(quality)
            print("\n   completed − raw training (scored on real values only):")
            print(cmp.round(4).to_string(index=False))
            report["completed_vs_raw"] = cmp.to_dict("records")

    print(f"\n== 4. Retrieval at SpaRED scale: {args.retrieval_spots:,} queries against {args.retrieval_spots:,} spots")
    n_ret = 2000 if args.quick else args.retrieval_spots
    retrieval = pd.DataFrame([child_measure(retrieval_run, kind, n_ret, args.threads) for kind in ("egn", "bleep")])
    print(retrieval.round(2).to_string(index=False))
    report["retrieval"] = retrieval.to_dict("records")

    print("\n== 5. Slide models: peak memory of one training step on N spots of one slide (112 px patches)")
    sizes = [32, 64] if args.quick else args.slide_spots
    slide_rows = pd.DataFrame([child_measure(slide_step, name, n, args.threads, str(device))
                               for name in ("histogene", "hist2st") for n in sizes])
    print(slide_rows.round(2).to_string(index=False))
    print(extrapolate(slide_rows, 5000).round(2).to_string(index=False))
    report["slide_memory"] = slide_rows.to_dict("records")

    report["load_average_end"] = os.getloadavg()[0]
    report["seconds"] = time.perf_counter() - t0
    print(f"\n== done in {report['seconds']:.0f} s (load average now {report['load_average_end']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
