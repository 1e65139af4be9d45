"""``neurolab explain neuron=SITE:UNIT``: what neurolab knows about one neuron, on one page.

    neurolab explain neuron=layers.2.mlp:117 store.dir=S corpus.path=C model.name_or_path=M

* **top contexts** and over-represented annotation values (concept search over the store's rows,
  when the store at ``store.dir`` holds the neuron's site);
* **rankings**: the neuron's rank in each ``explain.rankings`` file;
* **generated inputs** (:mod:`neurolab.causal.generation`, Poerner et al. 2018) of
  ``explain.generate.length`` tokens, next to the corpus's best n-gram of the same length scored in
  isolation (``corpus_best``) and, for length 1, the exhaustive optimum over the vocabulary
  (``exhaustive_best``).

Writes ``explain.json`` (``{"neuron", "top_contexts", "descriptions", "rankings", "generated":
[{"text", "activation"}], "corpus_best": {"text", "activation"}, "exhaustive_best": {...} | null}``)
and ``explain.html`` (one self-contained page; every corpus word is escaped).
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import output_dir
from ..errors import ConfigError
from .common import task

log = logging.getLogger(__name__)

__all__ = ["explain", "explain_page"]


#: explain.generate.* passed on to generate_inputs, with their types
_GENERATE_SETTINGS = {"steps": int, "restarts": int, "lr": float, "tau_start": float, "tau_end": float,
                      "eval_every": int, "candidates": int, "seed": int, "keep": int, "warm_start": int}


@task("explain")
def explain(cfg: DictConfig) -> dict:
    from ..causal.build import open_run_store
    from ..causal.generation import best_ngrams, check_neurons, exhaustive_best, generate_inputs, parse_neuron
    from ..models.loading import load_model

    run_dir = Path(output_dir(cfg))
    name = cfg.get("neuron")
    if name is None or str(name) in ("", "???"):
        raise ConfigError("explain needs neuron=SITE:UNIT, e.g. neuron=layers.2.mlp:117")
    site, unit = parse_neuron(str(name))
    ecfg = cfg.get("explain") or {}
    from ..causal.live import _device

    model, tok = load_model(cfg.model, device=_device(ecfg.get("device", "auto")))
    check_neurons(model, [(site, unit)], model_name=str(cfg.model.get("name_or_path")))
    out: dict[str, Any] = {"neuron": f"{site}:{unit}", "top_contexts": [], "descriptions": [], "rankings": []}
    store = open_run_store(cfg)
    corpus = None
    if store is not None and site in list(store.sites):
        from ..corpus import load_corpus
        from ..methods.concept_search import describe_neurons
        from ..ranking import NeuronRanking

        corpus, _ = load_corpus(cfg.corpus)
        nps = {s: int(store.neurons_per_site[s]) for s in store.sites}
        one = NeuronRanking.from_order([unit], sites=[site], neurons_per_site={site: nps[site]})
        (rep,) = describe_neurons(one, store, corpus, top_neurons=1, k=int(ecfg.get("k", 20)),
                                  alpha=float(ecfg.get("alpha", 0.01)))
        out["top_contexts"] = [c.to_dict() for c in rep.contexts]
        out["descriptions"] = [d.to_dict() for d in rep.descriptions]
    elif store is not None:
        log.warning("explain: the store %s holds no site %s (sites %s): no corpus contexts", store.path, site,
                    list(store.sites))
    else:
        log.warning("explain: no store at store.dir: no corpus contexts")
    for rp in ecfg.get("rankings") or []:
        from .evaluate import load_ranking

        r = load_ranking(rp)
        names = r.names
        key = f"{site}:{unit}"
        pos = names.index(key) if key in names else None
        out["rankings"].append({"path": str(rp), "concept": r.concept, "method": r.method,
                                "rank": None if pos is None else pos + 1, "of": len(names),
                                "score": None if pos is None else float(r.neurons[pos].score)})
    g = ecfg.get("generate") or {}
    out["generated"], out["corpus_best"], out["exhaustive_best"] = [], None, None
    if g.get("enabled", True):
        length = int(g.get("length", 1))
        kw = dict(position=g.get("position", "last"), exclude_subwords=bool(g.get("exclude_subwords", False)))
        # the settings given (conf/explain.yaml); generate_inputs' own defaults for the others
        opts = {k: cast(g[k]) for k, cast in _GENERATE_SETTINGS.items() if g.get(k) is not None}
        (gen,) = generate_inputs(model, tok, [(site, unit)], length=length, **opts, **kw)
        out["generated"] = [x.to_dict() for x in gen]
        if corpus is None:
            from ..corpus import load_corpus

            corpus, _ = load_corpus(cfg.corpus)
        best = best_ngrams(model, tok, (site, unit), corpus.words(), length,
                           max_ngrams=int(g.get("max_ngrams", 20000)), **kw)
        out["corpus_best"] = best[0].to_dict() if best else None
        if length == 1:
            out["exhaustive_best"] = exhaustive_best(model, tok, (site, unit), **kw)[0].to_dict()
    (run_dir / "explain.json").write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")
    (run_dir / "explain.html").write_text(explain_page(out), encoding="utf-8")
    metrics: dict[str, float] = {"explain/contexts": len(out["top_contexts"])}
    if out["generated"]:
        metrics["explain/generated_best"] = float(out["generated"][0]["activation"])
    if out["corpus_best"]:
        metrics["explain/corpus_best"] = float(out["corpus_best"]["activation"])
    if out["exhaustive_best"]:
        metrics["explain/exhaustive_best"] = float(out["exhaustive_best"]["activation"])
    log.info("explain %s: %s", out["neuron"], metrics)
    return metrics


def explain_page(info: dict) -> str:
    """The self-contained page of :func:`explain`'s result (every text escaped)."""
    from ..viz.html import _page, sentence_html

    e = html.escape
    parts = [f"<h1>Neuron {e(info['neuron'])}</h1>"]
    rows = []
    for label, key in (("generated (best)", None), ("best corpus n-gram", "corpus_best"),
                       ("exhaustive optimum (length 1)", "exhaustive_best")):
        item = (info.get("generated") or [None])[0] if key is None else info.get(key)
        if item:
            rows.append(f"<tr><td>{e(label)}</td><td class='gen'>{e(item['text'])}</td>"
                        f"<td class='num'>{item['activation']:.4g}</td></tr>")
    parts.append("<h2>Inputs it wants</h2><table><tr><th></th><th>text</th><th>activation</th></tr>"
                 + "".join(rows) + "</table>")
    if info.get("generated"):
        parts.append("<h3>Generated inputs</h3><table><tr><th>text</th><th>activation</th></tr>" + "".join(
            f"<tr><td class='gen'>{e(g['text'])}</td><td class='num'>{g['activation']:.4g}</td></tr>"
            for g in info["generated"]) + "</table>")
    if info.get("descriptions"):
        parts.append("<h2>Over-represented annotations among its top words</h2><table><tr><th>value</th>"
                     "<th>precision</th><th>base rate</th><th>p</th></tr>" + "".join(
                         f"<tr><td>{e(d['column'])}={e(str(d['value']))}</td><td class='num'>{d['precision']:.2f}</td>"
                         f"<td class='num'>{d['base_rate']:.2f}</td><td class='num'>{d['p_value']:.1e}</td></tr>"
                         for d in info["descriptions"]) + "</table>")
    if info.get("rankings"):
        parts.append("<h2>Rankings</h2><table><tr><th>concept</th><th>method</th><th>rank</th></tr>" + "".join(
            f"<tr><td>{e(str(r['concept']))}</td><td>{e(str(r['method']))}</td>"
            f"<td class='num'>{'-' if r['rank'] is None else r['rank']} / {r['of']}</td></tr>"
            for r in info["rankings"]) + "</table>")
    if info.get("top_contexts"):
        parts.append("<h2>Top corpus contexts</h2>")
        for c in info["top_contexts"]:
            parts.append(sentence_html(c["words"], c["activations"], highlight=c["word"], window=12))
    else:
        parts.append("<p>No corpus contexts (the store does not hold this neuron's site).</p>")
    return _page(f"neuron {info['neuron']}", "".join(parts))
