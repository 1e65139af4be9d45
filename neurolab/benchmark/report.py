"""The planted benchmark's leaderboard (HTML, self-contained) and plots (PNG).

* :func:`leaderboard` — per method: mean average precision per planted type (over effects and
  seeds), over all cases, and the number of failed cases; best overall first.
* :func:`plot_by_effect` — mean AP against the effect size, one panel per planted type, one line per
  method.
* :func:`write_leaderboard` — ``leaderboard.html``: the leaderboard, a table per type (method ×
  effect), the plots (embedded) and every row of ``benchmark.json`` with its status.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .planted import PLANTED_TYPES
from .scoring import summarize

__all__ = ["leaderboard", "plot_by_effect", "write_leaderboard", "CSS", "esc", "img_tag", "fmt"]

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.fail{color:#a00}img{max-width:100%;margin:0.5em 1em 0.5em 0;border:1px solid #eee}
p.note{color:#555;font-size:90%;max-width:60em}"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.{digits}f}"
    return esc(v)


def img_tag(path: str | os.PathLike, alt: str | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt or Path(path).name)}" src="data:image/png;base64,{data}">'


def _type_order(types) -> list[str]:
    return sorted(set(types), key=lambda t: (PLANTED_TYPES.index(t) if t in PLANTED_TYPES else 99, t))


def leaderboard(rows: Sequence[Mapping[str, Any]], key: str = "ap") -> list[dict[str, Any]]:
    """One entry per method: ``{"method", "mean", "<type>": mean, ..., "failed", "cases"}``, best first
    (a failed case counts as 0 in ``mean``, so failing is never better than scoring)."""
    methods = sorted({r["method"] for r in rows})
    types = _type_order(r["type"] for r in rows)
    out = []
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        entry: dict[str, Any] = {"method": m, "cases": len(mine),
                                 "failed": sum(1 for r in mine if r.get("status") != "ok")}
        for t in types:
            vals = [float(r[key]) if r.get("status") == "ok" and r.get(key) is not None else 0.0
                    for r in mine if r["type"] == t]
            entry[t] = float(np.mean(vals)) if vals else None
        allv = [float(r[key]) if r.get("status") == "ok" and r.get(key) is not None else 0.0 for r in mine]
        entry["mean"] = float(np.mean(allv)) if allv else None
        out.append(entry)
    out.sort(key=lambda e: (-(e["mean"] if e["mean"] is not None else -1.0), e["method"]))
    return out


def plot_by_effect(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, key: str = "ap",
                   title: str | None = None) -> Path:
    """Mean ``key`` against the effect size, one panel per planted type, one line per method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarize(rows, key)
    types = _type_order(s["type"] for s in summary)
    methods = sorted({s["method"] for s in summary})
    ncol = min(3, max(len(types), 1))
    nrow = int(math.ceil(len(types) / ncol)) if types else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for i, t in enumerate(types):
        ax = axes[i // ncol][i % ncol]
        for m in methods:
            pts = [(s["effect"], s["mean"]) for s in summary if s["type"] == t and s["method"] == m and s["mean"] is not None]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", label=m)
        ax.set_title(t)
        ax.set_xlabel("effect size d")
        ax.set_ylabel(key)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for j in range(len(types), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.suptitle(title or f"planted benchmark: {key} by effect size")
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.95))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_leaderboard(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, info: Mapping[str, Any] | None = None,
                      images: Sequence[str | os.PathLike] = (), seconds: Mapping[str, float] | None = None,
                      title: str = "neurolab planted benchmark") -> Path:
    """Write the self-contained ``leaderboard.html`` (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    board = leaderboard(rows)
    types = _type_order(r["type"] for r in rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style>"
             f"</head><body><h1>{esc(title)}</h1>"]
    if info:
        parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in info.items()) + "</table>")
    parts.append("<h2>Leaderboard: mean average precision</h2><p class=note>Mean AP of each method's ranking "
                 "against the planted neurons, over effect sizes and seeds (a failed case counts 0). "
                 "1 = the planted neurons come first; a uniformly random ranking of N neurons with R planted "
                 "scores H_N / N + (R - 1)(N - H_N) / (N (N - 1)) on average (H_N = 1 + 1/2 + ... + 1/N), "
                 "about R / N for several planted neurons.</p>")
    head = "".join(f"<th>{esc(t)}</th>" for t in types)
    sec = seconds or {}
    parts.append(f"<table><tr><th>#</th><th>method</th><th>all</th>{head}<th>failed</th>"
                 + ("<th>seconds</th>" if sec else "") + "</tr>")
    for i, e in enumerate(board, 1):
        cells = "".join(f"<td class=n>{fmt(e.get(t))}</td>" for t in types)
        fail = f"<td class={'fail' if e['failed'] else 'n'}>{e['failed']} / {e['cases']}</td>"
        parts.append(f"<tr><td class=n>{i}</td><td>{esc(e['method'])}</td><td class=n><b>{fmt(e['mean'])}</b></td>"
                     f"{cells}{fail}" + (f"<td class=n>{fmt(sec.get(e['method']), 1)}</td>" if sec else "") + "</tr>")
    parts.append("</table>")
    summary = summarize(rows)
    for t in types:
        effects = sorted({s["effect"] for s in summary if s["type"] == t})
        methods = [e["method"] for e in board]
        parts.append(f"<h3>{esc(t)}: AP by effect size</h3><table><tr><th>method</th>"
                     + "".join(f"<th>d = {fmt(x, 2)}</th>" for x in effects) + "</tr>")
        for m in methods:
            vals = {s["effect"]: s for s in summary if s["type"] == t and s["method"] == m}
            cells = "".join(
                f"<td class={'fail' if vals.get(x, {}).get('failed') else 'n'}>{fmt(vals.get(x, {}).get('mean'))}</td>"
                for x in effects)
            parts.append(f"<tr><td>{esc(m)}</td>{cells}</tr>")
        parts.append("</table>")
    if images:
        parts.append("<h2>Plots</h2>" + "".join(img_tag(p) for p in images if Path(p).exists()))
    cols = ["method", "type", "effect", "seed", "ap", "precision@k", "recall@k", "k", "ranks", "decoys@k", "status"]
    parts.append("<h2>All cases</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "status":
                cells.append(f"<td class={'n' if v == 'ok' else 'fail'}>{esc(v)}</td>")
            elif isinstance(v, list):
                cells.append(f"<td>{esc(', '.join(str(x) for x in v))}</td>")
            else:
                cells.append(f"<td class=n>{fmt(v)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(parts), encoding="utf-8")
    os.replace(tmp, path)
    return path
