"""Batched extraction of word-level (and optional sentence-level) activations.

>>> from neurolab.models import load_model
>>> from neurolab.extraction import Extractor
>>> model, tok = load_model({"name_or_path": "all-MiniLM-L6-v2"})           # doctest: +SKIP
>>> ex = Extractor(model, tok, "all_layers", aggregation="mean")            # doctest: +SKIP
>>> plan = ex.plan([["The", "cat", "sat", "."]], shard_size=16384)         # doctest: +SKIP
>>> res = ex.extract_shard(plan, plan.shards[0])                           # doctest: +SKIP
>>> res.activations["layers.0"].shape                                      # doctest: +SKIP
(4, 384)

How it is fast: sentences are cut into windows, sorted by length and packed into batches of at
most ``batch_tokens`` padded tokens; one forward pass per batch; hidden-state sites come from
``output_hidden_states`` and the other sites from hooks that keep a reference (no copy); subword ->
word aggregation is one ``index_select`` + ``segment_reduce`` (sum for mean, max) per site on the
device over the contiguous subwords of each word, and the result is cast to the storage dtype before
it leaves the device.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.hooks import capture
from ..models.loading import model_max_length
from ..models.sites import Site, resolve_sites
from .alignment import special_tokens, tokenize_words
from .plan import Plan, Shard, Window, make_batches, make_plan, shard_windows

log = logging.getLogger(__name__)

AGGREGATIONS = ("first", "last", "mean", "max")
SENTENCE_ROWS = (None, "mean", "first", "last")


def resolve_device(device: str | None) -> torch.device:
    d = str(device or "auto")
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"extract.device={d}: CUDA is not available on this machine (use cpu or auto)")
    return torch.device(d)


@dataclass
class ShardResult:
    shard: Shard
    activations: dict[str, np.ndarray]  # site -> [rows, units] (storage-ready numpy)
    sentence_ids: np.ndarray
    word_ids: np.ndarray
    sentence_activations: dict[str, np.ndarray] | None = None
    sentence_row_ids: np.ndarray | None = None  # corpus sentence index per sentence row


class Extractor:
    """Extracts activations of ``sites`` of ``model`` for pre-split sentences."""

    def __init__(
        self,
        model,
        tokenizer,
        sites: Any = "all_layers",
        *,
        aggregation: str = "mean",
        dtype: str = "fp16",
        batch_tokens: int = 8192,
        max_batch_sentences: int = 256,
        max_length: int | None = None,
        stride: int | None = None,
        device: str | torch.device | None = "auto",
        sentence_rows: str | None = None,
        autocast: bool = False,
        progress: bool = True,
    ):
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"extract.aggregation={aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
        if sentence_rows in ("none", "null", ""):
            sentence_rows = None
        if sentence_rows not in SENTENCE_ROWS:
            raise ConfigError(f"extract.sentence_rows={sentence_rows!r}: expected null, mean, first or last")
        from ..store.format import normalize_dtype

        try:
            self.dtype = normalize_dtype(dtype)
        except Exception:
            raise ConfigError(f"extract.dtype={dtype!r}: expected fp16, bf16 or fp32") from None
        self.model = model
        self.tokenizer = tokenizer
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model.to(self.device)
        self.model.eval()
        self.aggregation = aggregation
        self.batch_tokens = int(batch_tokens)
        self.max_batch_sentences = int(max_batch_sentences)
        self.max_length = model_max_length(model, tokenizer, max_length)
        if self.batch_tokens < self.max_length:
            log.info("extract.batch_tokens=%d < max_length=%d: long windows go one per batch", self.batch_tokens, self.max_length)
        self.stride = stride
        self.sentence_rows = sentence_rows
        self.autocast = bool(autocast)
        self.progress = progress
        self.sites: list[Site] = resolve_sites(model, sites)
        self.site_names = [s.name for s in self.sites]
        self.enc_dec = bool(getattr(model.config, "is_encoder_decoder", False))
        self.prefix, self.suffix = special_tokens(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.units = self._probe_units()
        self._buffer_dtype = torch.float16 if self.dtype == "fp16" else torch.float32

    # -- setup -----------------------------------------------------------------------------
    def _forward_kwargs(self, ids: torch.Tensor, mask: torch.Tensor) -> dict:
        kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.enc_dec:
            kw["decoder_input_ids"] = ids  # the decoder reads the same tokens (documented)
            kw["decoder_attention_mask"] = mask
        if any(s.kind == "hidden" for s in self.sites):
            kw["output_hidden_states"] = True
        if getattr(self.model.config, "use_cache", None) is not None:
            kw["use_cache"] = False
        kw["return_dict"] = True
        return kw

    def _run(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass; ``{site: [B, T, units]}`` on the device."""
        hook_sites = [s for s in self.sites if s.kind != "hidden"]
        ctx = (
            torch.autocast(self.device.type) if self.autocast else torch.autocast(self.device.type, enabled=False)
        )
        with torch.inference_mode(), ctx, capture(self.model, hook_sites) as cap:
            out = self.model(**self._forward_kwargs(ids, mask))
            acts: dict[str, torch.Tensor] = {}
            for s in self.sites:
                if s.kind == "hidden":
                    if self.enc_dec:
                        hs = out.encoder_hidden_states if s.stack == "encoder" else out.decoder_hidden_states
                    else:
                        hs = out.hidden_states
                    acts[s.name] = hs[s.index]
                else:
                    if s.name not in cap:
                        raise ConfigError(f"site {s.name!r} ({s.module}) was not reached by the forward pass")
                    acts[s.name] = cap[s.name]
        return acts

    def _probe_units(self) -> dict[str, int]:
        ids = torch.tensor([self.prefix + self.tokenizer(["a", "b"], is_split_into_words=True, add_special_tokens=False)["input_ids"] + self.suffix], device=self.device)
        mask = torch.ones_like(ids)
        acts = self._run(ids, mask)
        units = {}
        for s in self.sites:
            a = acts[s.name]
            if not torch.is_tensor(a) or a.dim() != 3 or a.shape[:2] != ids.shape:
                raise ConfigError(
                    f"site {s.name!r}: module output has shape {tuple(a.shape) if torch.is_tensor(a) else type(a).__name__}, "
                    f"expected [batch, tokens, units]; choose another module"
                )
            units[s.name] = int(a.shape[-1])
        return units

    # -- planning --------------------------------------------------------------------------
    def plan(self, sentences: Sequence[Sequence[str]], shard_size: int = 16384) -> Plan:
        toks = tokenize_words(self.tokenizer, sentences)
        plan = make_plan(toks, self.prefix, self.suffix, self.max_length, self.stride, shard_size)
        st = plan.stats
        if st["empty_sentences"]:
            log.warning("%d empty sentences (no words): they get no rows", st["empty_sentences"])
        if st["words_without_subwords"]:
            ex = [(i, w) for i, t in enumerate(toks) for w in t.missing][:10]
            examples = ", ".join(f"sentence {i} word {w} {sentences[i][w]!r}" for i, w in ex)
            log.warning(
                "%d words map to no subword token and get no row (e.g. %s)", st["words_without_subwords"], examples
            )
            st["words_without_subwords_examples"] = [[int(i), int(w)] for i, w in ex]
        if st["windowed_sentences"]:
            log.info(
                "%d sentences are longer than %d tokens: overlapping windows (stride %d)",
                st["windowed_sentences"], plan.window, plan.stride,
            )
        return plan

    def batches(self, plan: Plan, shard: Shard) -> tuple[list[list[Window]], np.ndarray]:
        windows, split = shard_windows(plan, shard, self.aggregation)
        return make_batches(windows, self.batch_tokens, self.max_batch_sentences), split

    def collate(self, plan: Plan, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``attention_mask`` of a batch (on the CPU)."""
        T = max(w.length for w in batch)
        ids = torch.full((len(batch), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        pre, suf = plan.prefix, plan.suffix
        for b, w in enumerate(batch):
            seq = pre + plan.tokens[w.sentence].ids[w.start : w.end].tolist() + suf
            ids[b, : len(seq)] = torch.as_tensor(seq)
            mask[b, : len(seq)] = 1
        return ids, mask

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # -- extraction ------------------------------------------------------------------------
    def extract_shard(self, plan: Plan, shard: Shard, bar=None) -> ShardResult:
        """Activations of every row of ``shard`` (corpus order)."""
        batches, split = self.batches(plan, shard)
        rows = shard.rows
        n_sent = shard.sent_end - shard.sent_start
        sent_counts = np.diff(plan.row_offset[shard.sent_start : shard.sent_end + 1])
        row_sent = np.repeat(np.arange(n_sent, dtype=np.int64), sent_counts)  # shard row -> local sentence
        buf = {s: torch.empty((rows, self.units[s]), dtype=self._buffer_dtype) for s in self.site_names}
        dev = self.device
        split_idx = np.full(rows, -1, dtype=np.int64)
        split_rows = np.flatnonzero(split)
        split_idx[split_rows] = np.arange(len(split_rows))
        acc: dict[str, dict[str, torch.Tensor]] = {}
        if len(split_rows):
            for s in self.site_names:
                acc[s] = {
                    "sum": torch.zeros((len(split_rows), self.units[s]), device=dev),
                    "max": torch.full((len(split_rows), self.units[s]), float("-inf"), device=dev),
                }
            acc_cnt = torch.zeros(len(split_rows), device=dev)
        srows = self.sentence_rows
        sent_acc = None
        if srows is not None:
            sent_acc = {s: torch.zeros((n_sent, self.units[s]), device=dev) for s in self.site_names}
        for batch in batches:
            ids, mask = self.collate(plan, batch)
            T = ids.shape[1]
            flat = np.concatenate([w.pos + b * T for b, w in enumerate(batch)])
            grow = np.concatenate([w.row for w in batch])
            acts = self._run(self.to_device(ids), self.to_device(mask))
            if len(flat) == 0:
                continue
            # the tokens of a word are contiguous in this order: one segment per (window, word)
            cut = np.flatnonzero(np.diff(grow)) + 1
            seg_start = np.concatenate([[0], cut]).astype(np.int64)
            seg_len = np.diff(np.concatenate([seg_start, [len(grow)]])).astype(np.int64)
            seg_row = grow[seg_start]
            is_split = split_idx[seg_row] >= 0
            direct = np.flatnonzero(~is_split)
            all_direct = len(direct) == len(seg_row)
            single = bool(np.all(seg_len == 1))
            flat_t = torch.as_tensor(flat, device=dev)
            len_t = torch.as_tensor(seg_len, device=dev)
            direct_t = torch.as_tensor(direct, device=dev)
            rows_direct = torch.as_tensor(seg_row[direct])
            if not all_direct:
                sp = torch.as_tensor(np.flatnonzero(is_split), device=dev)
                sp_i = torch.as_tensor(split_idx[seg_row[is_split]], device=dev)
                acc_cnt.index_add_(0, sp_i, len_t.index_select(0, sp).float())
            if sent_acc is not None and srows == "mean":
                sent_of_direct = torch.as_tensor(row_sent[seg_row[direct]], device=dev)
            if sent_acc is not None and srows in ("first", "last"):
                sel = [(b, w) for b, w in enumerate(batch) if (w.first if srows == "first" else w.last)]
                s_flat = torch.as_tensor(
                    [b * T + (0 if srows == "first" else w.length - 1) for b, w in sel], dtype=torch.long, device=dev
                )
                s_local = torch.as_tensor([w.sentence - shard.sent_start for _, w in sel], dtype=torch.long, device=dev)
            for s in self.site_names:
                a = acts[s]
                H = a.shape[-1]
                a2 = a.reshape(-1, H)
                x = a2.index_select(0, flat_t)
                if x.dtype != torch.float32:
                    x = x.float()
                if single:  # first / last, or every word a single subword: nothing to reduce
                    v = x
                elif self.aggregation == "max":
                    v = torch.segment_reduce(x, "max", lengths=len_t)
                else:  # segment sums (mean divides below; split words accumulate sums and counts)
                    v = torch.segment_reduce(x, "sum", lengths=len_t)
                if not all_direct:
                    if self.aggregation == "max":
                        acc[s]["max"][sp_i] = torch.maximum(acc[s]["max"][sp_i], v.index_select(0, sp))
                    else:
                        acc[s]["sum"].index_add_(0, sp_i, v.index_select(0, sp))
                vd = v if all_direct else v.index_select(0, direct_t)
                if self.aggregation == "mean" and not single:
                    vd = vd / (len_t if all_direct else len_t.index_select(0, direct_t))[:, None].to(vd.dtype)
                buf[s].index_copy_(0, rows_direct, vd.to(self._buffer_dtype).cpu())
                if sent_acc is not None:
                    if srows == "mean":
                        sent_acc[s].index_add_(0, sent_of_direct, vd)
                    elif len(s_flat):
                        sent_acc[s][s_local] = a2.index_select(0, s_flat).float()
            if bar is not None:
                bar.update(len(direct))
        if len(split_rows):
            rt = torch.as_tensor(split_rows)
            for s in self.site_names:
                if self.aggregation == "max":
                    v = acc[s]["max"]
                elif self.aggregation == "mean":
                    v = acc[s]["sum"] / acc_cnt[:, None]
                else:  # first / last: exactly one token of the word was selected
                    v = acc[s]["sum"]
                buf[s].index_copy_(0, rt, v.to(self._buffer_dtype).cpu())
                if sent_acc is not None and srows == "mean":
                    sent_acc[s].index_add_(0, torch.as_tensor(row_sent[split_rows], device=dev), v)
            if bar is not None:
                bar.update(len(split_rows))
        sent_ids = np.repeat(np.arange(shard.sent_start, shard.sent_end, dtype=np.int64), sent_counts)
        word_ids = (
            np.concatenate([plan.row_words[i] for i in range(shard.sent_start, shard.sent_end)]).astype(np.int64)
            if rows else np.zeros(0, np.int64)
        )
        res = ShardResult(shard, {s: _to_numpy(buf[s]) for s in self.site_names}, sent_ids, word_ids)
        if sent_acc is not None:
            has = sent_counts > 0
            keep = torch.as_tensor(np.flatnonzero(has), device=dev)
            out = {}
            for s in self.site_names:
                v = sent_acc[s].index_select(0, keep)
                if srows == "mean":
                    v = v / torch.as_tensor(sent_counts[has], dtype=torch.float32, device=dev)[:, None]
                out[s] = _to_numpy(v.to(self._buffer_dtype).cpu())
            res.sentence_activations = out
            res.sentence_row_ids = np.arange(shard.sent_start, shard.sent_end, dtype=np.int64)[has]
        return res

    def bare_forward(self, plan: Plan, shards: Iterable[Shard] | None = None) -> int:
        """Forward passes over the same batches with no hooks and no writing; returns rows covered."""
        n = 0
        for shard in shards if shards is not None else plan.shards:
            batches, _ = self.batches(plan, shard)
            for batch in batches:
                ids, mask = self.collate(plan, batch)
                kw = {"input_ids": self.to_device(ids), "attention_mask": self.to_device(mask), "return_dict": True}
                if self.enc_dec:
                    kw["decoder_input_ids"] = kw["input_ids"]
                if getattr(self.model.config, "use_cache", None) is not None:
                    kw["use_cache"] = False
                with torch.inference_mode():
                    self.model(**kw)
            n += shard.rows
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return n


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.numpy()


def progress_bar(total: int, enabled: bool = True, desc: str = "extract"):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="word", unit_scale=True, desc=desc, file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, mininterval=0.5)
