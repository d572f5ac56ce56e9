"""Interactive explorers (``su.pl.explore_slide``, ``su.pl.explore_prediction``): ipywidgets on top
of a matplotlib figure.

In a live kernel (JupyterLab, Colab) the dropdowns redraw the figure. In a batch run (the book's
build) the explorer draws a bounded set of views beforehand (:meth:`Explorer.html`: every choice
of each control but the gene, and as many genes as keep it at :data:`MAX_VIEWS`) into an HTML
fragment whose dropdowns swap the image without a kernel, so a reader of the rendered book
still picks a method and a gene. Its display also carries a PNG of the first view, for
renderers that show no HTML (``_config.yml`` ranks the widget view below both for HTML).
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from anndata import AnnData
from matplotlib.figure import Figure

from .metrics import per_gene_pcc
from .paths import STATIC_VIEWS_ENV
from .plots.style import COMPLETION_LABELS, _touching_hex_size
from .utils import dense

__all__ = ["Explorer", "explore_prediction", "explore_slide", "folded", "readable", "SLIDE_PANELS"]

#: The slide explorer's default panels: (title, layer, kind); ``kind`` is ``"measured"`` (the
#: layer where ``mask`` is True, missing spots grey), ``"mask"`` or ``"values"`` (every spot).
SLIDE_PANELS: tuple[tuple[str, str, str], ...] = (
    ("measured", "c_d_log1p", "measured"),
    ("missing values", "mask", "mask"),
    ("median completion", "c_d_log1p", "values"),
    ("SpaCKLE completion", "c_t_log1p", "values"),
    ("best completion", "c_best_log1p", "values"),
)


#: "1" in this environment variable: no widgets, the views drawn beforehand (:meth:`Explorer.html`).
STATIC_ENV = STATIC_VIEWS_ENV
#: The most views an explorer draws beforehand for a page without a kernel.
MAX_VIEWS = 8


@dataclass
class Explorer:
    """A figure, the controls that choose what it shows, and the function that redraws it.

    Attributes
    ----------
    figure
        The matplotlib figure (redrawn in place by :meth:`update`).
    controls
        Name → ipywidgets control (a ``Dropdown``); changing a value calls :meth:`update`.
    draw
        ``draw(figure, **values)``: draws the view for the controls' values.
    updates
        How many times the figure was redrawn (the first drawing included).
    """

    figure: Figure
    controls: dict
    draw: Callable[..., None]
    updates: int = 0
    _output: object = field(default=None, repr=False)

    def values(self) -> dict:
        """The controls' current values."""
        return {name: control.value for name, control in self.controls.items()}

    def update(self, change=None) -> None:
        """Redraw the figure for the controls' current values (the widgets' ``observe`` callback)."""
        self.figure.clear()
        self.draw(self.figure, **self.values())
        self.updates += 1
        if self._output is not None:
            from IPython.display import clear_output, display

            with self._output:
                clear_output(wait=True)
                display(self.figure)

    def png(self, dpi: int = 90) -> bytes:
        """The current view as PNG bytes."""
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return buffer.getvalue()

    def widget(self):
        """The controls above an output area that shows the figure (ipywidgets ``VBox``)."""
        import ipywidgets as w
        from IPython.display import display

        if self._output is None:
            self._output = w.Output()
            with self._output:
                display(self.figure)
        return w.VBox([w.HBox(list(self.controls.values())), self._output])

    def views(self, max_views: int = MAX_VIEWS) -> dict[str, list]:
        """The choices the kernel-free page offers: every option of each control but ``gene``
        (the current one first), then as many genes (the current one first) as keep the number of
        views at ``max_views`` or under (two genes at least)."""
        values = self.values()
        options = {name: [values[name], *[o for o in control.options if o != values[name]]]
                   for name, control in self.controls.items()}
        fixed = int(np.prod([len(v) for k, v in options.items() if k != "gene"]))
        if "gene" in options:
            options["gene"] = options["gene"][:max(2, max_views // max(fixed, 1))]
        return options

    def html(self, max_views: int = MAX_VIEWS, dpi: int = 60) -> str:
        """A page fragment that works without a kernel: one dropdown per control and the views
        drawn beforehand (:meth:`views`, PNG images embedded); choosing a value swaps the image
        (a few lines of JavaScript), so a reader of the rendered book still explores."""
        import html as html_lib
        import itertools
        import json
        import uuid

        options = self.views(max_views)
        start = self.values()
        images = {}
        for combo in itertools.product(*options.values()):
            chosen = dict(zip(options, combo))
            self.figure.clear()
            self.draw(self.figure, **chosen)
            images["|".join(map(str, combo))] = "data:image/png;base64," + base64.b64encode(self.png(dpi)).decode()
        self.figure.clear()
        self.draw(self.figure, **start)  # back to the first view
        key = "|".join(str(start[name]) for name in options)
        ident = f"su-explorer-{uuid.uuid4().hex[:8]}"
        selects = "".join(
            f'<label style="margin-right:1em">{html_lib.escape(name)} <select data-control="{html_lib.escape(name)}">'
            + "".join(f'<option{" selected" if o == start[name] else ""}>{html_lib.escape(str(o))}</option>'
                      for o in opts) + "</select></label>"
            for name, opts in options.items())
        script = (f"(function(){{var root=document.getElementById('{ident}');"
                  f"var views=JSON.parse(root.querySelector('script[type=\"application/json\"]').textContent);"
                  "var img=root.querySelector('img');root.querySelectorAll('select').forEach(function(s){"
                  "s.addEventListener('change',function(){var k=[].map.call(root.querySelectorAll('select'),"
                  "function(x){return x.value}).join('|');if(views[k]){img.src=views[k];}});});})();")
        note = (f"{len(images)} views drawn beforehand (in a live kernel: every "
                f"{' and '.join(options)})")
        return (f'<div class="su-explorer" id="{ident}"><div>{selects}<small>{html_lib.escape(note)}</small></div>'
                f'<img src="{images[key]}" style="max-width:100%" alt="explorer view">'
                f'<script type="application/json">{json.dumps(images)}</script><script>{script}</script></div>')

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {"text/plain": f"<Explorer: {', '.join(f'{k}={v!r}' for k, v in self.values().items())}>",
                  "image/png": base64.b64encode(self.png()).decode()}
        if os.environ.get(STATIC_ENV) == "1":  # a batch run (the book's build): the page a reader explores
            bundle["text/html"] = self.html()
        try:
            from ipykernel.kernelbase import Kernel
        except ImportError:  # pragma: no cover
            return bundle
        # a live kernel: the widget view too (frontends prefer it) — but not in a batch run
        # (papermill): nothing would use the widgets, and nbclient has been seen to hang, now and
        # then, on an Output widget displayed while a cell's result is being formatted
        if Kernel.initialized() and os.environ.get(STATIC_ENV) != "1":
            view = self.widget()._repr_mimebundle_()
            bundle.update({k: v for k, v in view.items() if k != "text/plain"})
        return bundle


def _make(figure: Figure, options: Mapping[str, Sequence], defaults: Mapping[str, object],
          draw: Callable[..., None]) -> Explorer:
    """Dropdowns for ``options`` (set to ``defaults``), observed by the explorer's update."""
    import ipywidgets as w

    controls = {name: w.Dropdown(options=list(opts), value=defaults[name], description=name)
                for name, opts in options.items()}
    explorer = Explorer(figure, controls, draw)
    for control in controls.values():
        control.observe(explorer.update, names="value")
    explorer.update()
    return explorer


def _slide_axes(ax, xy_slide: np.ndarray) -> float:
    ax.set_aspect("equal")
    ax.set_xlim(xy_slide[:, 0].min() - 50, xy_slide[:, 0].max() + 50)
    ax.set_ylim(xy_slide[:, 1].max() + 50, xy_slide[:, 1].min() - 50)
    ax.set_axis_off()
    return _touching_hex_size(ax, xy_slide)


def _column(adata: AnnData, layer: str, rows: np.ndarray, j: int) -> np.ndarray:
    return np.asarray(dense(adata.layers[layer][rows][:, [j]])).ravel()


def explore_slide(
    adata: AnnData | Mapping[str, AnnData],
    panels: Sequence[tuple[str, str, str]] = SLIDE_PANELS,
    slide: str | None = None,
    gene: str | None = None,
    mask_layer: str = "mask",
    cmap: str = "viridis",
) -> Explorer:
    """Pick a dataset, a slide and a gene: its measured map, missing values and completions.

    Parameters
    ----------
    adata
        A curated dataset (``obsm["spatial"]``, ``obs["slide_id"]``, the panels' layers), or
        dataset id → dataset to choose among.
    panels
        ``(title, layer, kind)`` per panel (:data:`SLIDE_PANELS`); panels whose layer the
        dataset lacks are left out (``c_t_log1p`` exists once SpaCKLE ran, ``c_best_log1p`` once
        :func:`~spared_utils.completion.add_best_completion` chose the best method, chapter 02).
    slide, gene
        The first view (default: the first slide, the gene with the most missing values).
    mask_layer
        Boolean layer, True where a value was measured.
    cmap
        Colour map of the expression panels (one scale shared by them).

    Returns
    -------
    Explorer
        Displays as dropdowns over the figure in a live kernel, as the first view elsewhere.
    """
    datasets = dict(adata) if isinstance(adata, Mapping) else {"dataset": adata}
    first = next(iter(datasets.values()))
    if mask_layer not in first.layers:
        raise ValueError(f"explore_slide needs the boolean layer {mask_layer!r} (True = measured); the "
                         f"dataset has {list(first.layers)}: pass a curated dataset (chapter 01)")
    shown = [p for p in panels if p[1] in first.layers]
    if slide is None:
        slide = str(first.obs["slide_id"].astype(str).iloc[0])
    if gene is None:
        missing = 1 - np.asarray(dense(first.layers[mask_layer]), dtype=bool).mean(axis=0)
        gene = str(first.var_names[int(np.argmax(missing))])

    def draw(fig: Figure, dataset: str, slide: str, gene: str) -> None:
        data = datasets[dataset]
        slides = data.obs["slide_id"].astype(str).to_numpy()
        rows = np.flatnonzero(slides == slide)
        if rows.size == 0:  # a slide of another dataset: show this dataset's first slide
            rows = np.flatnonzero(slides == slides[0])
        j = data.var_names.get_loc(gene) if gene in data.var_names else 0
        xy = np.asarray(data.obsm["spatial"])[rows]
        real = _column(data, mask_layer, rows, j).astype(bool)
        values = [_column(data, layer, rows, j) for _, layer, kind in shown if kind != "mask"]
        lo, hi = np.percentile(np.concatenate(values), [2, 98]) if values else (0, 1)
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        for ax, (title, layer, kind) in zip(axes, shown):
            size = _slide_axes(ax, xy)
            if kind == "mask":
                ax.scatter(xy[:, 0], xy[:, 1], c=np.where(real, 0.85, 0.15), cmap="gray", vmin=0, vmax=1,
                           s=size, marker="h", linewidths=0)
                title = f"{title}: {100 * (1 - real.mean()):.0f}% (dark)"
            else:
                keep = real if kind == "measured" else np.ones(len(rows), bool)
                ax.scatter(xy[~keep, 0], xy[~keep, 1], s=size, marker="h", color="0.85", linewidths=0)
                sc = ax.scatter(xy[keep, 0], xy[keep, 1], c=_column(data, layer, rows, j)[keep], s=size,
                                marker="h", cmap=cmap, vmin=lo, vmax=hi, linewidths=0)
            best = data.uns.get("best_completion", {})
            if kind != "mask" and layer == best.get("layer"):  # name the method that won
                title = f"{title}: {best['method']}"
            ax.set_title(title, fontsize=10)
        if values:
            fig.colorbar(sc, ax=list(axes), shrink=0.7, label=f"{data.var_names[j]}: log2(TPM + 1)")
        fig.suptitle(f"{dataset}, slide {slides[rows[0]]}, gene {data.var_names[j]}")

    figure = Figure(figsize=(3.3 * len(shown) + 1, 3.6))
    slides = sorted({str(s) for d in datasets.values() for s in d.obs["slide_id"].astype(str).unique()})
    genes = list(first.var_names)
    return _make(figure, {"dataset": list(datasets), "slide": slides, "gene": genes},
                 {"dataset": next(iter(datasets)), "slide": slide, "gene": gene}, draw)


def explore_prediction(
    adata: AnnData,
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    truth_layer: str = "c_d_log1p",
    mask_layer: str = "mask",
    gene: str | None = None,
    cmap: str = "viridis",
) -> Explorer:
    """Pick a prediction (predictor and scenario) and a gene: predicted vs measured map, per-gene PCC.

    Parameters
    ----------
    adata
        The dataset the predictions are for (``obsm["spatial"]``, ``obs["slide_id"]``, layers).
    predictions
        Label (e.g. ``"ViT-B, completed"``) → ``(rows, predicted)``: the AnnData rows that were
        predicted and the predictions, one column per gene of ``adata.var_names``.
    truth_layer, mask_layer
        The measured values and where they are real; PCC is computed on real values only.
    gene
        The first gene shown (default: the best predicted gene of the first prediction).
    cmap
        Colour map of the two maps (one scale shared by them).

    Returns
    -------
    Explorer
        Controls ``prediction`` and ``gene``; the map shows the first slide of the rows.
    """
    if not predictions:
        raise ValueError("explore_prediction needs at least one prediction: label → (rows, predicted)")
    for label, (rows, pred) in predictions.items():
        if np.shape(pred) != (len(rows), adata.n_vars):
            raise ValueError(f"prediction {label!r}: shape {np.shape(pred)}, expected ({len(rows)}, {adata.n_vars}) "
                             "(one row per predicted spot, one column per gene of adata.var_names)")

    def pcc(label: str) -> np.ndarray:
        rows, pred = predictions[label]
        truth = np.asarray(dense(adata.layers[truth_layer][rows]))
        real = np.asarray(dense(adata.layers[mask_layer][rows])).astype(bool)
        return per_gene_pcc(np.asarray(pred), truth, real)

    if gene is None:  # the best-predicted gene; the first when no PCC is defined (constant predictions)
        scores = np.asarray(pcc(next(iter(predictions))), dtype=np.float64)
        gene = str(adata.var_names[int(np.nanargmax(scores)) if np.isfinite(scores).any() else 0])

    def draw(fig: Figure, prediction: str, gene: str) -> None:
        rows, pred = predictions[prediction]
        rows, pred = np.asarray(rows), np.asarray(pred)
        slides = adata.obs["slide_id"].astype(str).to_numpy()
        on = slides[rows] == slides[rows[0]]
        j = adata.var_names.get_loc(gene)
        xy = np.asarray(adata.obsm["spatial"])[rows[on]]
        truth = _column(adata, truth_layer, rows[on], j)
        real = _column(adata, mask_layer, rows[on], j).astype(bool)
        shown = pred[on, j]
        lo, hi = np.percentile(np.concatenate([truth[real], shown]), [2, 98])
        ax_true, ax_pred, ax_pcc = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.3]})
        for ax, vals, keep, title in ((ax_true, truth, real, "measured (grey: missing)"),
                                      (ax_pred, shown, np.ones(len(shown), bool), "predicted")):
            size = _slide_axes(ax, xy)
            ax.scatter(xy[~keep, 0], xy[~keep, 1], s=size, marker="h", color="0.85", linewidths=0)
            sc = ax.scatter(xy[keep, 0], xy[keep, 1], c=vals[keep], s=size, marker="h", cmap=cmap,
                            vmin=lo, vmax=hi, linewidths=0)
            ax.set_title(title, fontsize=10)
        fig.colorbar(sc, ax=[ax_true, ax_pred], shrink=0.7, label=f"{gene}: log2(TPM + 1)")
        scores = pcc(prediction)
        order = np.argsort(-np.nan_to_num(scores, nan=-2))
        colours = ["C1" if adata.var_names[k] == gene else "0.6" for k in order]
        ax_pcc.bar(np.arange(len(order)), scores[order], color=colours, width=1.0)
        ax_pcc.axhline(0, color="0.3", linewidth=0.8)
        ax_pcc.set(xlabel="genes, best first", ylabel="PCC on real values",
                   title=f"per-gene PCC ({gene}: {scores[j]:.2f})")
        fig.suptitle(f"{prediction}: slide {slides[rows[0]]}, {int(on.sum())} spots")

    figure = Figure(figsize=(12, 3.8))
    return _make(figure, {"prediction": list(predictions), "gene": list(adata.var_names)},
                 {"prediction": next(iter(predictions)), "gene": gene}, draw)


def readable(table):
    """``table`` with the labels a reader sees in the book's figures: completion methods by their
    legend names (``neighbour_mean`` → "neighbour mean", :data:`~spared_utils.plots.style.
    COMPLETION_LABELS`), other column labels and every axis name with spaces for underscores.
    Index values other than methods (dataset ids, slides) are kept. Headers with spaces wrap, so
    the table fits the book's column; the values are not touched."""
    def column(label):
        return COMPLETION_LABELS.get(label, label.replace("_", " ")) if isinstance(label, str) else label

    def row(label):
        return COMPLETION_LABELS.get(label, label) if isinstance(label, str) else label

    def names(index):
        return [n.replace("_", " ") if isinstance(n, str) else n for n in index.names]

    out = table.rename(columns=column, index=row)
    out.columns = out.columns.set_names(names(out.columns))
    out.index = out.index.set_names(names(out.index))
    return out


def folded(table, summary: str, digits: int = 4):
    """The whole ``table`` inside a closed ``<details>`` block whose line reads ``summary``: what a
    chapter shows under a narrower table, so that no column hides behind a horizontal scroll (a
    reader opens it in the rendered page; it needs no kernel)."""
    import html

    from IPython.display import HTML

    body = table.round(digits).to_html(index=False, border=0, classes="folded-table", na_rep="")
    return HTML(f"<details><summary>{html.escape(summary)}</summary>\n{body}\n</details>")
