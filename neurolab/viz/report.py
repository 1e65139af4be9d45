"""A short, self-contained HTML summary of a run (images embedded as data URIs, no external files)."""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..ranking import NeuronRanking

__all__ = ["write_report", "HEADLINE"]

HEADLINE = ("test/acc", "top/acc@1%", "random/acc@1%", "bottom/acc@1%", "mask/acc@1%", "control/acc", "selectivity",
            "top/selectivity@1%", "minimal/neurons")

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%}
th{background:#f3f3f3;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;margin:0.5em 1em 0.5em 0;border:1px solid #eee}code{background:#f6f6f6}"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return html.escape(str(v))


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def write_report(
    path: str | os.PathLike,
    metrics: Mapping[str, float],
    rankings: Mapping[str, NeuronRanking] | None = None,
    images: Sequence[str | os.PathLike] = (),
    *,
    title: str = "neurolab run",
    info: Mapping[str, str] | None = None,
    top_n: int = 20,
) -> Path:
    """Write ``report.html``: headline figures, the run's settings, plots, the top ``top_n`` neurons of
    each ranking and all metrics. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if info:
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                                         for k, v in info.items()) + "</table>")
    head = [(k, metrics[k]) for k in HEADLINE if k in metrics]
    if head:
        parts.append("<h2>Headline</h2><table>" + "".join(
            f"<tr><th>{html.escape(k)}</th><td class=n>{_fmt(v)}</td></tr>" for k, v in head) + "</table>")
    if images:
        parts.append("<h2>Plots</h2>" + "".join(_img(Path(p)) for p in images if Path(p).exists()))
    for name, r in (rankings or {}).items():
        parts.append(f"<h2>Top {min(top_n, len(r))} neurons: {html.escape(name)}</h2>"
                     "<table><tr><th>rank</th><th>neuron</th><th>score</th></tr>")
        parts.extend(f"<tr><td class=n>{i}</td><td><code>{html.escape(n.name)}</code></td>"
                     f"<td class=n>{_fmt(n.score)}</td></tr>" for i, n in enumerate(r.neurons[:top_n]))
        parts.append("</table>")
    parts.append("<h2>All metrics</h2><table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td class=n>{_fmt(v)}</td></tr>" for k, v in sorted(metrics.items())) +
        "</table></body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path
