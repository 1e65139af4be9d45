"""Scale run (outside CI): a synthetic store of a given size, probed, ranked and evaluated end to end
with the defaults and ``data.memory_budget_mb=0``. Prints ONE JSON object.

1. Builds a CoNLL-U corpus of 20-word sentences (UPOS drawn from 17 tags) and a store with
   :func:`neurolab.store.write_store` of ``--gb`` GB of fp16 rows over ``--sites`` sites x 768 units,
   written slice by slice (never in memory). Unit ``3 * c`` of ``layers.0`` carries UPOS class ``c``
   (the planted neurons); everything else is Gaussian noise.
2. Runs ``neurolab probe`` (linear), ``neurolab rank method=probeless`` and ``neurolab evaluate``
   on the probe's ranking as subprocesses and reports each one's whole-process peak RSS (the
   ``RUSAGE_CHILDREN`` maximum of a fresh intermediate process) and time.
3. Checks that the planted neurons come first in the probe's and the ranker's rankings.
4. Times one streamed training epoch of the data module (``memory_budget_mb=0``) against a
   sequential read of the store's bytes (every shard file read in order, converted to float32).
   Once the store is larger than RAM both read from disk (no page cache).

    python tests/benchmarks/scale_run.py --gb 32 --workdir /big/disk/scale [--sites 2] [--extra k=v ...]

Targets (issue 19): peak RSS under 2 GB for every command; planted neurons first; epoch time
>= 0.7 x the sequential read. The figures measured go to ``tests/benchmarks/BENCHMARKS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.benchmarks.bench_memory_cli import UNITS, Planted, run_cli  # noqa: E402

TAGS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT",
        "SCONJ", "SYM", "VERB", "X"]
SENT_LEN = 20


def make_corpus(rows: int, path: Path) -> np.ndarray:
    """A CoNLL-U file of ``rows`` words; returns the class code of every word (sorted tags)."""
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, len(TAGS) + 1)
    codes = rng.choice(len(TAGS), size=rows, p=p / p.sum()).astype(np.int64)
    if path.exists():
        return codes
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s, a in enumerate(range(0, rows, SENT_LEN)):
            f.write(f"# sent_id = s{s}\n")
            for i, c in enumerate(codes[a:a + SENT_LEN]):
                t = TAGS[int(c)]
                w = f"{t.lower()}{(a + i) % 97}"
                f.write(f"{i + 1}\t{w}\t{w}\t{t}\t_\t_\t0\tdep\t_\t_\n")
            f.write("\n")
    tmp.rename(path)
    return codes


class PooledPlanted(Planted):
    """``Planted`` with its noise copied from a seeded fp16 pool (each slice a window of the pool at a
    seeded offset): drawing tens of billions of fresh normals takes hours on two cores, copying them
    does not."""

    POOL_ROWS = 1 << 16

    def __init__(self, codes: np.ndarray, seed: int, plant: bool):
        super().__init__(codes, seed, plant)
        rng = np.random.default_rng([seed, 7])
        self.pool = rng.standard_normal((2 * self.POOL_ROWS, UNITS), dtype=np.float32).astype(np.float16)

    def _noise(self, a: int, b: int) -> np.ndarray:
        out = np.empty((b - a, UNITS), dtype=np.float16)
        rng = np.random.default_rng([self.seed, a])
        for i in range(0, b - a, self.POOL_ROWS):
            n = min(self.POOL_ROWS, b - a - i)
            off = int(rng.integers(0, self.POOL_ROWS))
            out[i:i + n] = self.pool[off:off + n]
        return out


def build(gb: float, sites: list[str], d: Path) -> tuple[Path, Path, int]:
    from neurolab.store import write_store

    rows = int(gb * 1e9 // (len(sites) * UNITS * 2))
    rows -= rows % SENT_LEN
    d.mkdir(parents=True, exist_ok=True)
    corpus = d / "corpus.conllu"
    codes = make_corpus(rows, corpus)
    store = d / "store"
    if not (store / "manifest.json").exists():
        sid = np.arange(rows, dtype=np.int64) // SENT_LEN
        wid = np.arange(rows, dtype=np.int64) % SENT_LEN
        acts = {s: PooledPlanted(codes, k, k == 0) for k, s in enumerate(sites)}
        write_store(store, acts, sid, wid, meta={"model": "synthetic-scale"}, dtype="fp16", shard_size=65536)
    return corpus, store, rows


def epoch_vs_read(corpus: Path, store: Path) -> dict:
    """One streamed epoch of the data module against a sequential read (child process)."""
    code = f"""
import json, re, time, numpy as np
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would keep the forking parent's resident set)
    return round(int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024, 1)
from neurolab.config import compose
from neurolab.data import build_datamodule
from neurolab.store import ActivationStore
cfg = compose("probe", ["corpus.path={corpus}", "store.dir={store}", "data.memory_budget_mb=0", "logger=none"],
              run_dir="{store.parent / 'epoch_run'}")
st = ActivationStore.open("{store}")
t0 = time.perf_counter(); nbytes = 0
for sh in st.shards:
    for s in st.sites:
        a = np.load(st.path / "shards" / sh["dir"] / (s + ".npy"), mmap_mode="r")
        for i in range(0, len(a), 8192):
            b = np.asarray(a[i:i + 8192], dtype=np.float32); nbytes += b.nbytes // 2
        del a
t_read = time.perf_counter() - t0
dm = build_datamodule(cfg); dm.setup()
loader = dm.train_dataloader(); t_epoch = None
for _ in range(2):  # the faster of two epochs (the first also maps the loader's buffers)
    t0 = time.perf_counter(); n = 0
    for x, y in loader:
        n += len(x)
    t = time.perf_counter() - t0
    t_epoch = t if t_epoch is None else min(t, t_epoch)
share = n / st.num_tokens
print(json.dumps({{"sequential_read_s": round(t_read, 1), "GB": round(nbytes / 1e9, 2), "epoch_s": round(t_epoch, 1),
                  "epoch_rows": n, "ratio": round(t_read * share / t_epoch, 3),
                  "peak_rss_mb": peak_mb()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled"))
    if out.returncode:
        return {"error": out.stderr[-1500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=32.0)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--extra", nargs="*", default=[])
    ap.add_argument("--skip-epoch", action="store_true")
    ap.add_argument("--epoch-only", action="store_true", help="only the epoch against the sequential read")
    args = ap.parse_args()
    d = Path(args.workdir)
    sites = [f"layers.{i}" for i in range(args.sites)]
    t0 = time.perf_counter()
    corpus, store, rows = build(args.gb, sites, d)
    res: dict = {"benchmark": "scale_run", "rows": rows, "sites": sites, "units_per_site": UNITS,
                 "store_gb": round(rows * len(sites) * UNITS * 2 / 1e9, 2), "build_s": round(time.perf_counter() - t0, 1),
                 "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
                 "extra_overrides": args.extra, "commands": {}}
    planted = {3 * c for c in range(len(TAGS))}
    if args.epoch_only:
        res["epoch_vs_sequential_read"] = epoch_vs_read(corpus, store)
        print(json.dumps(res))
        return
    probe_dir = d / "run_probe"
    res["commands"]["probe:linear"] = run_cli("probe", ["probe=linear"], corpus, store, probe_dir, args.extra)
    res["commands"]["rank:probeless"] = run_cli("rank", ["method=probeless"], corpus, store, d / "run_rank", args.extra)
    res["commands"]["evaluate"] = run_cli("evaluate", [f"ranking={probe_dir / 'ranking.json'}"], corpus, store,
                                          d / "run_evaluate", args.extra)
    for name, rd in (("probe:linear", probe_dir), ("rank:probeless", d / "run_rank")):
        f = rd / "ranking.json"
        if f.exists():
            top = [n["index"] for n in json.loads(f.read_text())["neurons"][:len(planted)]]
            res["commands"][name]["planted_first"] = sum(i in planted for i in top) / len(planted)
        m = rd / "metrics.json"
        if m.exists():
            res["commands"][name]["metrics"] = {k: v for k, v in json.loads(m.read_text()).items()
                                                if k in ("test/acc", "top/acc@1%", "random/acc@1%", "top/acc@5%")}
    if not args.skip_epoch:
        res["epoch_vs_sequential_read"] = epoch_vs_read(corpus, store)
    res["max_peak_rss_mb"] = max(v["peak_rss_mb"] for v in res["commands"].values())
    res["rusage_children_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
