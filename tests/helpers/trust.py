"""Helpers for the damage-and-misuse tests: a small tagged corpus with its store, quick verb settings,
and ways to damage a store the way a disk, an editor or a careless user would."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: quick evaluation settings for verb tests (one size, one random draw, no control / mask / search)
QUICK = ["logger=none", "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "trainer.enable_checkpointing=false",
         "evaluation.percentages=[10]", "evaluation=[retrain,sites]", "evaluation.retrain.random_seeds=[0]",
         "evaluation.retrain.bottom=false", "evaluation.plots=false", "viz.enabled=false"]


def tagged_store(folder: Path, num_sentences: int = 60, dtype: str = "fp16", shard_size: int = 100) -> tuple[Path, Path]:
    """(conllu, store dir): a tagged CoNLL-U file and a planted store over its words (several shards)."""
    from neurolab.corpus import read_conllu
    from neurolab.store import write_store
    from tests.helpers.evaluation import PLANTED_SITES, PLANTED_UNITS, write_tagged_conllu

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    conllu = write_tagged_conllu(folder / "tagged.conllu", num_sentences=num_sentences)
    corpus = read_conllu(conllu)
    rng = np.random.default_rng(0)
    lens = [len(s.words) for s in corpus.sentences]
    sid = np.repeat(np.arange(len(lens)), lens)
    wid = np.concatenate([np.arange(n) for n in lens])
    tags = [t for s in corpus.sentences for t in s.annotations["upos"]]
    acts = {s: rng.standard_normal((len(sid), u)).astype(np.float32) for s, u in PLANTED_SITES.items()}
    for i, t in enumerate(tags):
        site, unit = PLANTED_UNITS[t]
        acts[site][i, unit] += 3.0
    write_store(folder / "store", acts, sid, wid, meta={"model": "planted-test"}, dtype=dtype, shard_size=shard_size)
    return conllu, folder / "store"


def verb_overrides(store: Path, conllu: Path, *extra: str) -> list[str]:
    return [f"store.dir={store}", f"corpus.path={conllu}", "extract_if_missing=false", *QUICK, *extra]


def probe_overrides(store: Path, conllu: Path, *extra: str) -> list[str]:
    return [o for o in verb_overrides(store, conllu, *extra) if not o.startswith("viz.")]


def edit_manifest(store: Path, **changes) -> None:
    """Change top-level manifest fields as a text editor would (the digest is left as it was)."""
    mp = Path(store) / "manifest.json"
    m = json.loads(mp.read_text())
    m.update(changes)
    mp.write_text(json.dumps(m, indent=2))


def set_value(store: Path, shard: str, site: str, row: int, unit: int, value: float) -> Path:
    """Overwrite one stored activation in place (its .npy header untouched); returns the file."""
    f = Path(store) / "shards" / shard / f"{site}.npy"
    a = np.load(f, mmap_mode="r+")
    a[row, unit] = value
    a.flush()
    del a
    return f


def flip_byte(path: Path, offset: int, xor: int = 0x01) -> None:
    b = bytearray(Path(path).read_bytes())
    b[offset] ^= xor
    Path(path).write_bytes(bytes(b))


def reseal(store: Path) -> None:
    """Recompute every checksum, shard record and the manifest's digest, as a writer that wrote the
    current bytes would have (so the values themselves are the only thing wrong)."""
    import hashlib

    mp = Path(store) / "manifest.json"
    m = json.loads(mp.read_text())
    for sh in m["shards"]:
        d = Path(store) / "shards" / sh["dir"]
        for name in sh["files"]:
            sh["files"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
        meta = json.loads((d / "shard.json").read_text())
        meta["files"] = sh["files"]
        (d / "shard.json").write_text(json.dumps(meta))
    m["digest"] = manifest_digest(m)
    mp.write_text(json.dumps(m))


def manifest_digest(m: dict) -> str:
    """The digest a store manifest records of its content: sha256 of its canonical JSON without the
    ``digest`` field (sorted keys, no spaces), computed here independently of the store code."""
    import hashlib

    body = {k: v for k, v in m.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
