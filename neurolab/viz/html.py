"""Self-contained HTML views of neurons and concepts (inline CSS, images as data URIs, no network).

* :func:`sentence_html` — a sentence, each word coloured by one neuron's activation on a diverging
  scale (blue < 0 < red, white at 0), the value on hover (``title``);
* :func:`neuron_page` — a neuron's top-activating words in context, its automatic description
  (over-represented annotation values) and its compositional explanation;
* :func:`concept_page` — a ranking's top neurons (score, description, top words) and their per-site
  distribution;
* :func:`write_pages` — all of it for a ranking, from a store and a corpus, into
  ``<run_dir>/pages/`` (``index.html`` = the concept page), also logged through a
  :class:`~neurolab.tracking.Tracker` (HTML, tables, images). ``neurolab rank`` and ``neurolab run``
  call it.
"""
from __future__ import annotations

import base64
import html
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence


from ..ranking import NeuronRanking

log = logging.getLogger(__name__)

__all__ = ["activation_color", "sentence_html", "neuron_page", "concept_page", "write_pages", "POSITIVE_RGB",
           "NEGATIVE_RGB", "page_name"]

#: full-scale colours of the diverging scale (positive, negative); white at zero
POSITIVE_RGB = (214, 39, 40)
NEGATIVE_RGB = (31, 119, 180)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:22px 0 8px} .sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px} td,th{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left}
th{background:#f6f6f6} .num{text-align:right;font-variant-numeric:tabular-nums}
.sent{line-height:2.1;font-size:15px;margin:2px 0} .w{padding:3px 4px;border-radius:3px;margin:0 1px}
.top{outline:2px solid #111;font-weight:600} .ell{color:#999}
.legend{display:inline-block;width:220px;height:12px;vertical-align:middle;border:1px solid #ccc;
background:linear-gradient(to right,rgb(31,119,180),#fff,rgb(214,39,40))}
.bar{display:inline-block;height:12px;background:#4C72B0;vertical-align:middle}
.tag{display:inline-block;background:#eef;border-radius:3px;padding:1px 5px;margin:1px;font-size:12px}
a{color:#1f5fa8;text-decoration:none} a:hover{text-decoration:underline} img{max-width:100%}
"""


def activation_color(value: float, vmax: float) -> str:
    """CSS colour of ``value`` on the diverging scale saturating at ``±vmax``."""
    if value is None or not math.isfinite(value) or vmax <= 0:
        return "rgb(255,255,255)"
    t = max(-1.0, min(1.0, value / vmax))
    full = POSITIVE_RGB if t >= 0 else NEGATIVE_RGB
    a = abs(t)
    r, g, b = (round(255 + (c - 255) * a) for c in full)
    return f"rgb({r},{g},{b})"


def _text_color(value: float, vmax: float) -> str:
    return "#fff" if vmax > 0 and math.isfinite(value) and abs(value) / vmax > 0.6 else "#111"


def sentence_html(words: Sequence[str], activations: Sequence[float], *, vmax: float | None = None,
                  highlight: int | None = None, window: int | None = None, label: str = "") -> str:
    """One sentence as a ``<div>``; word ``i`` coloured by ``activations[i]`` (NaN: no value, white).

    ``window`` shows only that many words on each side of ``highlight``.
    """
    acts = [float(a) if a is not None else float("nan") for a in activations]
    if vmax is None:
        finite = [abs(a) for a in acts if math.isfinite(a)]
        vmax = max(finite) if finite else 1.0
    lo, hi = 0, len(words)
    if window is not None and highlight is not None:
        lo, hi = max(0, highlight - window), min(len(words), highlight + window + 1)
    parts = ['<span class="ell">… </span>'] if lo > 0 else []
    for i in range(lo, hi):
        a = acts[i] if i < len(acts) else float("nan")
        val = "n/a" if not math.isfinite(a) else f"{a:.4g}"
        cls = "w top" if i == highlight else "w"
        parts.append(
            f'<span class="{cls}" style="background:{activation_color(a, vmax)};color:{_text_color(a, vmax)}" '
            f'title="{html.escape(words[i])}: {val}{(" · " + html.escape(label)) if label else ""}">{html.escape(words[i])}</span>'
        )
    if hi < len(words):
        parts.append('<span class="ell"> …</span>')
    return f'<div class="sent">{" ".join(parts)}</div>'


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def _img(path: str | os.PathLike | None, alt: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page_name(neuron_name: str) -> str:
    """File name of a neuron's page (``layers.3.mlp:117`` → ``neuron_layers.3.mlp_117.html``)."""
    return "neuron_" + re.sub(r"[^A-Za-z0-9._-]", "_", neuron_name) + ".html"


def _desc_rows(descriptions: Sequence[Any], limit: int = 12) -> str:
    if not descriptions:
        return '<p class="sub">No annotation value is over-represented among the top words.</p>'
    rows = "".join(
        f"<tr><td>{html.escape(d.column)}</td><td><b>{html.escape(d.value)}</b></td><td class=num>{d.count}</td>"
        f"<td class=num>{d.precision:.2f}</td><td class=num>{d.base_rate:.3f}</td><td class=num>{d.p_value:.2e}</td></tr>"
        for d in list(descriptions)[:limit]
    )
    return ("<table><tr><th>column</th><th>value</th><th>top words</th><th>precision</th><th>base rate</th>"
            f"<th>p (hypergeometric)</th></tr>{rows}</table>")


def neuron_page(name: str, contexts: Sequence[Any], *, descriptions: Sequence[Any] = (), explanation: Any = None,
                score: float | None = None, rank: int | None = None, concept: str = "", method: str = "",
                window: int | None = 12, back: str | None = "index.html") -> str:
    """HTML page of one neuron: its top contexts (coloured sentences), description and formula."""
    finite = [abs(a) for c in contexts for a in c.activations if a is not None and math.isfinite(a)]
    vmax = max(finite) if finite else 1.0
    head = f"<h1>neuron {html.escape(name)}</h1>"
    sub = []
    if rank is not None:
        sub.append(f"rank {rank + 1}")
    if score is not None and math.isfinite(score):
        sub.append(f"{html.escape(method)} score {score:.4g} for {html.escape(concept)}")
    if back:
        sub.append(f'<a href="{html.escape(back)}">concept page</a>')
    head += f'<div class="sub">{" · ".join(sub)}</div>'
    head += (f'<p class="sub">colour scale: <span class="legend"></span> −{vmax:.3g} … 0 … +{vmax:.3g} '
             "(hover a word for its activation)</p>")
    desc = "<h2>Concept alignment</h2>" + _desc_rows(descriptions)
    if descriptions:
        desc = ("<h2>Concept alignment</h2><p>fires on: " + " ".join(
            f'<span class="tag">{html.escape(d.label)}</span>' for d in list(descriptions)[:5]) + "</p>" + _desc_rows(descriptions))
    if explanation is not None and getattr(explanation, "formula", ""):
        desc += (f"<p>best formula (IoU {explanation.iou:.3f}, active on {explanation.active} words at ≥ "
                 f"{explanation.threshold:.4g}): <b>{html.escape(explanation.formula)}</b></p>")
    rows = "".join(
        f"<tr><td class=num>{i + 1}</td><td class=num>{c.value:.4g}</td><td>"
        f"{sentence_html(c.words, c.activations, vmax=vmax, highlight=c.word, window=window, label=name)}</td></tr>"
        for i, c in enumerate(contexts)
    )
    ctx = f"<h2>Top activating words</h2><table><tr><th>#</th><th>activation</th><th>context</th></tr>{rows}</table>"
    return _page(f"neuron {name}", head + desc + ctx)


def concept_page(ranking: NeuronRanking, *, top: int = 20, descriptions: Mapping[int, Sequence[Any]] | None = None,
                 top_words: Mapping[int, Sequence[str]] | None = None, links: Mapping[int, str] | None = None,
                 site_plot: str | os.PathLike | None = None, extra_images: Sequence[tuple[str, str | os.PathLike]] = (),
                 explanations: Mapping[int, Any] | None = None, metrics: Mapping[str, float] | None = None,
                 site_spec: str = "10%") -> str:
    """HTML page of a ranking: top neurons, their descriptions, and the per-site distribution."""
    descriptions, top_words, links = descriptions or {}, top_words or {}, links or {}
    explanations = explanations or {}
    head = (f"<h1>{html.escape(ranking.concept or 'concept')}</h1><div class=sub>method {html.escape(ranking.method)}"
            f" · model {html.escape(ranking.model or '?')} · {ranking.total} neurons in {len(ranking.sites)} sites</div>")
    neurons = ranking.neurons[:top]
    best = list((ranking.extra or {}).get("best_class_top100") or [])
    show_best = bool(best) and len(set(best)) > 1
    smax = max([abs(n.score) for n in neurons if math.isfinite(n.score)] or [1.0]) or 1.0
    rows = []
    for r, n in enumerate(neurons):
        nm = html.escape(n.name)
        cell = f'<a href="{html.escape(links[n.index])}">{nm}</a>' if n.index in links else nm
        d = " ".join(f'<span class="tag">{html.escape(x.label)}</span>' for x in list(descriptions.get(n.index, []))[:3])
        if show_best and r < len(best):
            d = f"<div>best class <b>{html.escape(str(best[r]))}</b></div>" + d
        e = explanations.get(n.index)
        if e is not None and getattr(e, "formula", ""):
            d += f'<div class=sub>{html.escape(e.formula)} (IoU {e.iou:.2f})</div>'
        words = html.escape(", ".join(top_words.get(n.index, [])[:8]))
        width = int(100 * abs(n.score) / smax) if math.isfinite(n.score) else 0
        rows.append(f"<tr><td class=num>{r + 1}</td><td>{cell}</td><td class=num>{n.score:.4g}</td>"
                    f'<td><span class="bar" style="width:{width}px"></span></td><td>{d}</td><td>{words}</td></tr>')
    table = ("<h2>Top neurons</h2><table><tr><th>#</th><th>neuron</th><th>score</th><th></th><th>description</th>"
             f"<th>top words</th></tr>{''.join(rows)}</table>")
    counts = ranking.by_site(site_spec)
    cmax = max(counts.values() or [1]) or 1
    srows = "".join(f'<tr><td>{html.escape(s)}</td><td class=num>{c}</td><td><span class="bar" '
                    f'style="width:{int(200 * c / cmax)}px"></span></td></tr>' for s, c in counts.items())
    sites = (f"<h2>Per-site distribution of the top {html.escape(site_spec)} ({ranking.count(site_spec)} neurons)</h2>"
             f"<table><tr><th>site</th><th>neurons</th><th></th></tr>{srows}</table>" + _img(site_plot, "sites"))
    for alt, p in extra_images:
        sites += _img(p, alt)
    met = ""
    if metrics:
        mrows = "".join(f"<tr><td>{html.escape(k)}</td><td class=num>{v:.4g}</td></tr>" for k, v in sorted(metrics.items())
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
        met = f"<h2>Evaluation</h2><table>{mrows}</table>"
    return _page(f"{ranking.concept} — {ranking.method}", head + table + sites + met)


def write_pages(run_dir: str | os.PathLike, ranking: NeuronRanking, reports: Sequence[Any], *, context: int = 12,
                explanations: Sequence[Any] = (), metrics: Mapping[str, float] | None = None, tracker: Any = None,
                site_counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Pages under ``run_dir/pages`` for the neurons of ``reports`` (concept search results,
    :func:`neurolab.methods.concept_search.describe_neurons`): one page per neuron and an index.

    Returns ``{"index": path, "neurons": {name: path}, "images": [...], "descriptions": {name: [...]}}``
    and logs pages, a table and images to ``tracker`` (a Tracker or a Lightning logger) when given.
    """
    from ..tracking import Tracker
    from .figures import plot_scores
    from .plots import plot_site_distribution

    out_dir = Path(run_dir) / "pages"
    out_dir.mkdir(parents=True, exist_ok=True)
    expl = {int(e.neuron): e for e in explanations}
    links, pages, desc_by_index, words_by_index, table_rows = {}, {}, {}, {}, []
    for rep in reports:
        ix, nm = rep.index, rep.name
        page = neuron_page(nm, rep.contexts, descriptions=rep.descriptions, explanation=expl.get(ix), score=rep.score,
                           rank=rep.rank, concept=ranking.concept, method=ranking.method, window=context)
        fname = page_name(nm)
        (out_dir / fname).write_text(page, encoding="utf-8")
        links[ix], pages[nm] = fname, out_dir / fname
        desc_by_index[ix] = rep.descriptions
        words_by_index[ix] = rep.top_words
        table_rows.append([rep.rank, nm, float(rep.score), "; ".join(d.label for d in rep.descriptions[:3]),
                           ", ".join(words_by_index[ix][:10]), expl[ix].formula if ix in expl else ""])
    images = []
    site_png = None
    if site_counts:
        site_png = plot_site_distribution(site_counts, out_dir / "sites.png",
                                          title=f"top neurons per site: {ranking.concept} / {ranking.method}")
        images.append(site_png)
    score_png = plot_scores(ranking, out_dir / "scores.png")
    images.append(score_png)
    index = out_dir / "index.html"
    index.write_text(concept_page(ranking, top=max(len(reports), 20), descriptions=desc_by_index,
                                  top_words=words_by_index, links=links, site_plot=site_png,
                                  extra_images=[("scores", score_png)], explanations=expl, metrics=metrics),
                     encoding="utf-8")
    if tracker is not None:
        tr = tracker if isinstance(tracker, Tracker) else Tracker(tracker)
        tr.log_table("concept_search", ["rank", "neuron", "score", "description", "top_words", "formula"], table_rows)
        tr.log_html("pages/concept", index)
        for nm in list(pages)[:5]:
            tr.log_html(f"pages/{nm}", pages[nm])
        for p in images:
            tr.log_image(f"plots/{Path(p).stem}", p)
    log.info("wrote %d neuron pages and %s", len(pages), index)
    return {"index": index, "neurons": pages, "images": images,
            "descriptions": {rep.name: [d.to_dict() for d in rep.descriptions] for rep in reports}}
