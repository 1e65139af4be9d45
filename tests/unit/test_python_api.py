"""The README's "From Python" example, run as written on a store made with write_store over the demo
corpus (a planted noun neuron), plus Lightning's own Trainer.test on the probe it trains."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_python_api(tmp_path, demo_conllu, monkeypatch):
    from neurolab.corpus import read_conllu
    from neurolab.store import write_store

    corpus = read_conllu(demo_conllu)
    sent = np.concatenate([np.full(len(s), i) for i, s in enumerate(corpus.sentences)])
    word = np.concatenate([np.arange(len(s)) for s in corpus.sentences])
    upos = np.concatenate([s.annotations["upos"] for s in corpus.sentences])
    rng = np.random.default_rng(0)
    acts = {s: rng.normal(size=(len(sent), 16)).astype(np.float32) for s in ("layers.0", "layers.1")}
    acts["layers.1"][:, 3] += 3.0 * (upos == "NOUN")
    write_store(tmp_path / "STORE", acts, sent, word, {"model": "toy"})
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"### From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace('"train.conllu"', repr(str(demo_conllu)))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    method, metrics, dm, probe = ns["method"], ns["metrics"], ns["dm"], ns["probe"]
    assert method.ranking_.names[0] == "layers.1:3"  # the planted neuron leads
    assert metrics["top/acc@1%"] > metrics["random/acc@1%"]
    # the probe evaluated on the data module equals a numpy argmax over the normalised test rows
    X, y = dm.arrays("test")
    W, b = probe.linear.weight.detach().numpy(), probe.linear.bias.detach().numpy()
    ref = float(np.mean(np.argmax(X @ W.T + b, axis=1) == y))
    assert probe.evaluate(dm, "test")["test/acc"] == pytest.approx(ref, abs=1e-6)
    import pytorch_lightning as pl

    out = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False).test(probe, dm.test_dataloader(), verbose=False)
    assert out[0]["test/acc"] == pytest.approx(ref, abs=1e-6)
