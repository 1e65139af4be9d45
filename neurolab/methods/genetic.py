"""Evolutionary neuron selection (``method=genetic``): a genetic search for a subset of ``k`` neurons
that a fast closed-form probe decodes the concept from best.

1. **Candidate pool.** One streaming pass over the training split (normalised features) gives per-class
   counts, sums and sums of squares, hence each neuron's one-way ANOVA F statistic; the ``pool`` best
   neurons by F are the candidates (the search never leaves them).
2. **Sufficient statistics.** A second pass accumulates the pool's ``[P, P]`` Gram matrix in float64;
   with the class means it gives the pooled within-class covariance (LDA) or the centred Gram matrix
   (ridge). The dev split's pool columns are kept (at most ``max_dev_rows`` rows, a seeded sample).
3. **Fitness** of a subset ``S``: dev accuracy (or balanced accuracy) of the closed-form probe on ``S``
   alone: linear discriminant analysis (``probe=lda``: ``W = Sigma_SS^-1 mu_S``, shrunk towards a
   scaled identity by ``shrinkage``) or a ridge classifier (``probe=ridge``: least squares on one-hot
   targets, penalty ``alpha`` per row). A ``k x k`` solve and one ``[dev, k]`` product per subset:
   thousands of subsets per second, whatever the number of training rows.
4. **Search.** A population of ``population`` subsets (the pool's top ``k`` by F; the top ``k`` by the
   size of their weights in one LDA read-out of the whole pool, a multivariate cheap ranking that sees
   neurons weak alone but strong together; then random subsets drawn with a seeded
   ``numpy.random.Generator``, half of them favouring better-F candidates), tournament
   selection, subset crossover (the parents' common neurons plus a random draw from the rest of their
   union), mutation (each neuron replaced by a random pool neuron with probability ``mutation``,
   default ``1/k``) and elitism (the ``elite`` best subsets survive unchanged), for ``generations``
   generations or until the best fitness has not improved for ``patience`` generations. The best subset
   is then polished by at most ``polish`` sweeps of first-improvement swaps (each member against every
   pool neuron outside the subset), which completes a group the crossover brought within one neuron.
5. **Ranking.** The best subset found (its neurons by how many subsets of the final population hold
   them), then the other pool neurons by that survival count (ties: the pool order), then every other
   neuron in ANOVA-F order. The final population holds distinct subsets (offspring that repeat one are
   drawn again), so survival counts how many good subsets a neuron takes part in.

The search is a small numpy implementation rather than a library (e.g. DEAP): the fitness is the
closed form above, which needs the streamed statistics rather than a per-individual model; subsets of
a fixed size need their own crossover and mutation (list operators such as one-point crossover would
duplicate neurons); and a library's global ``random`` state would not follow the seed contract (one
``Generator`` from ``seed``, same seed, same ranking).

Example::

    >>> import numpy as np
    >>> from neurolab.data import ArrayData
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(3000, 40)).astype(np.float32); y = (X[:, 3] + X[:, 17] > 0).astype(int)
    >>> m = GeneticSelection(k=2, population=20, generations=15).fit(ArrayData.from_split(X, y))
    >>> sorted(m.ranking_.top(2).tolist())
    [3, 17]
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from ..ranking import NeuronRanking, resolve_count
from .base import Method, RunContext

log = logging.getLogger(__name__)

__all__ = ["GeneticSelection", "anova_f"]

PROBES = ("lda", "ridge")
FITNESS = ("acc", "balanced_acc", "loglik")


def anova_f(count: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> np.ndarray:
    """One-way ANOVA F per feature from per-class counts ``[C]``, sums and sums of squares ``[C, F]``
    (0 for a feature without within-class variance, or with fewer than two classes present)."""
    count = np.asarray(count, dtype=np.float64)
    present = count > 0
    n, c = float(count.sum()), int(present.sum())
    if c < 2 or n <= c:
        return np.zeros(sums.shape[1])
    mu_c = sums[present] / count[present, None]
    mu = sums.sum(0) / n
    ssb = (count[present, None] * (mu_c - mu) ** 2).sum(0)
    ssw = np.maximum((squares[present] - count[present, None] * mu_c ** 2).sum(0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ssb / (c - 1)) / (ssw / (n - c))
    return np.where(np.isfinite(f), f, 0.0)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread (threadpoolctl, when installed) for the search: its products are
    tiny (``[dev, k] x [k, C]``), and waking a second thread costs more than the work, several times
    more on a busy machine."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _concept_name(data) -> str:
    name = getattr(type(data), "concept_name", None)
    if name is not None:
        try:
            return str(data.concept_name)
        except Exception:
            pass
    c = getattr(data, "concept", "")
    return str(getattr(c, "name", c) or "")


class GeneticSelection(Method):
    """Genetic search for the ``k`` neurons a closed-form probe decodes best (see the module docstring)."""

    name = "genetic"

    def __init__(self, k: int | str = "1%", pool: int | str = 256, population: int = 64, generations: int = 150,
                 patience: int = 30, crossover: float = 0.9, mutation: float | None = None, elite: int = 2,
                 tournament: int = 3, probe: str = "lda", shrinkage: float = 0.01, alpha: float = 1e-3,
                 fitness: str = "loglik", polish: int = 3, max_dev_rows: int = 50000, chunk_rows: int = 8192,
                 seed: int | None = None):
        self.k = k
        self.pool = pool
        self.population = population
        self.generations = generations
        self.patience = patience
        self.crossover = crossover
        self.mutation = mutation
        self.elite = elite
        self.tournament = tournament
        self.probe = probe
        self.shrinkage = shrinkage
        self.alpha = alpha
        self.fitness = fitness
        self.polish = polish
        self.max_dev_rows = max_dev_rows
        self.chunk_rows = chunk_rows
        self.seed = seed

    # -- checks -----------------------------------------------------------------------------------
    def _check(self, total: int) -> tuple[int, int]:
        if self.probe not in PROBES:
            raise ConfigError(f"method.probe={self.probe!r}; expected one of {list(PROBES)}")
        if self.fitness not in FITNESS:
            raise ConfigError(f"method.fitness={self.fitness!r}; expected one of {list(FITNESS)}")
        if self.fitness == "loglik" and self.probe != "lda":
            raise ConfigError("method.fitness=loglik needs method.probe=lda (the ridge classifier has no likelihood)")
        try:
            k = resolve_count(self.k, total)
            pool = resolve_count(self.pool, total)
        except ValueError as e:
            raise ConfigError(f"method.k / method.pool: {e}") from None
        if isinstance(self.k, (int, np.integer)) and int(self.k) > total:
            raise ConfigError(f"method.k={self.k} exceeds the data's {total} neurons")
        if k < 1:
            raise ConfigError(f"method.k={self.k!r} selects no neuron")
        pool = max(pool, k)
        if int(self.population) < 2 or int(self.generations) < 0 or int(self.tournament) < 1:
            raise ConfigError(f"method.population (>= 2), generations (>= 0), tournament (>= 1): got "
                              f"{self.population}, {self.generations}, {self.tournament}")
        if not 0 <= int(self.elite) < int(self.population):
            raise ConfigError(f"method.elite={self.elite} must be in [0, population={self.population})")
        for key in ("crossover",) + (("mutation",) if self.mutation is not None else ()):
            v = float(getattr(self, key))
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"method.{key}={v} must be a probability in [0, 1]")
        return k, pool

    # -- statistics -------------------------------------------------------------------------------
    def _moments(self, data, C: int, F: int):
        count = np.zeros(C, np.float64)
        sums = np.zeros((C, F), np.float64)
        squares = np.zeros((C, F), np.float64)
        for X, y in data.iter_chunks("train", chunk_rows=int(self.chunk_rows), normalize=True):
            X = np.asarray(X, dtype=np.float64)
            y = np.asarray(y, dtype=np.int64)
            count += np.bincount(y, minlength=C)[:C]
            onehot = np.zeros((len(y), C))
            onehot[np.arange(len(y)), y] = 1.0
            sums += onehot.T @ X
            squares += onehot.T @ (X * X)
        return count, sums, squares

    def _gram(self, data, pool: np.ndarray) -> np.ndarray:
        G = np.zeros((len(pool), len(pool)), np.float64)
        for X, _ in data.iter_chunks("train", chunk_rows=int(self.chunk_rows), normalize=True):
            Z = np.asarray(X[:, pool], dtype=np.float64)
            G += Z.T @ Z
        return G

    def _dev(self, data, pool: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for X, y in data.iter_chunks("val", chunk_rows=int(self.chunk_rows), normalize=True):
            xs.append(np.asarray(X[:, pool], dtype=np.float32))
            ys.append(np.asarray(y, dtype=np.int64))
        if not xs or sum(len(y) for y in ys) == 0:
            raise ConfigError("method=genetic scores subsets on the dev split, and the data has no dev rows "
                              "(corpus.split with a dev share, or a corpus.dev file)")
        Xd, yd = np.concatenate(xs), np.concatenate(ys)
        if len(yd) > int(self.max_dev_rows):
            keep = np.sort(rng.choice(len(yd), size=int(self.max_dev_rows), replace=False))
            Xd, yd = Xd[keep], yd[keep]
        return Xd, yd

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, data, context: RunContext | None = None) -> "GeneticSelection":
        context = RunContext.ensure(context)
        t0 = time.perf_counter()
        if getattr(data, "task", "classification") != "classification":
            raise ConfigError("method=genetic needs a classification concept (its fitness scores class predictions on dev)")
        data.setup()
        cols = np.asarray(data.columns, dtype=np.int64)
        F = len(cols)
        C = int(data.num_classes)
        k, P = self._check(F)
        P = min(P, F)
        seed = int(self.seed if self.seed is not None else context.seed)
        rng = np.random.default_rng(seed)

        count, sums, squares = self._moments(data, C, F)
        fstat = anova_f(count, sums, squares)
        f_order = np.lexsort((np.arange(F), -fstat))
        pool = f_order[:P]  # pool position i: the i-th best candidate by F
        G = self._gram(data, pool)
        Xd, yd = self._dev(data, pool, rng)
        t_stats = time.perf_counter() - t0

        score = self._scorer(count, sums[:, pool], G, Xd, yd, C)
        joint = self._joint_order(count, sums[:, pool], G)
        with one_blas_thread():
            best, final, curve, evals, gens = self._search(score, P, k, rng, seeds=[np.sort(joint[:k])])
        freq = np.zeros(P)
        for ind in final:
            freq[ind] += 1.0
        freq /= len(final)
        in_best = np.zeros(P, dtype=bool)
        in_best[best[0]] = True
        pos = np.arange(P)
        pool_order = np.lexsort((pos, -freq, ~in_best))
        order_local = np.concatenate([pool[pool_order], f_order[P:]])
        scores = np.concatenate([freq[pool_order], np.zeros(F - P)])
        seconds = time.perf_counter() - t0
        best_cols = sorted(int(c) for c in cols[pool[best[0]]])
        extra = {"k": k, "pool": P, "probe": self.probe, "fitness": self.fitness, "seed": seed,
                 "best_subset": best_cols, "best_fitness": float(best[1]), "fitness_curve": [round(float(v), 6) for v in curve],
                 "generations": gens, "evaluations": evals}
        self.ranking_ = NeuronRanking.from_order(cols[order_local], scores, sites=list(data.sites),
                                                 neurons_per_site=dict(data.neurons_per_site),
                                                 concept=_concept_name(data), method=self.name, model=context.model,
                                                 extra=extra)
        self.best_subset_ = np.asarray(best_cols, dtype=np.int64)
        self.best_fitness_ = float(best[1])
        self.survival_ = dict(zip(cols[pool].tolist(), freq.tolist()))
        self.metrics_ = {f"genetic/dev_{self.fitness}": float(best[1]), "genetic/generations": float(gens),
                         "genetic/evaluations": float(evals), "genetic/pool": float(P), "genetic/k": float(k),
                         "time/genetic_stats_s": round(t_stats, 3), "time/genetic_s": round(seconds, 3)}
        log.info("genetic: %d of %d neurons (pool %d), dev %s %.4f after %d generations (%d subsets scored) in %.1f s",
                 k, F, P, self.fitness, best[1], gens, evals, seconds)
        return self

    def _joint_order(self, count, sums_pool, G) -> np.ndarray:
        """Pool positions by the size of their weights in one LDA read-out of the whole pool (the
        within-class covariance shrunk as in the fitness; weight rows' L2 norm over the classes against
        the mean): a multivariate cheap ranking, which sees neurons that are weak alone but strong
        together. Its top ``k`` seeds the population next to the ANOVA-F top ``k``."""
        n = float(count.sum())
        present = count > 0
        mu = sums_pool[present] / count[present, None]
        within = G - (count[present, None, None] * mu[:, :, None] * mu[:, None, :]).sum(0)
        cov = within / n
        lam = max(float(self.shrinkage), 1e-6)
        P = len(cov)
        cov = (1.0 - lam) * cov + lam * (np.trace(cov) / max(P, 1)) * np.eye(P)
        delta = mu - (count[present, None] * mu).sum(0) / n  # [C', P]
        try:
            W = np.linalg.solve(cov, delta.T)  # [P, C']
        except np.linalg.LinAlgError:
            return np.arange(P)
        size = np.sqrt((W * W).sum(1))
        return np.lexsort((np.arange(P), -size))

    def _scorer(self, count, sums_pool, G, Xd, yd, C):
        """``score(subset) -> fitness`` for subsets given as pool positions."""
        n = float(count.sum())
        present = count > 0
        mu = np.where(present[:, None], sums_pool / np.maximum(count, 1)[:, None], 0.0)  # [C, P]
        log_prior = np.where(present, np.log(np.maximum(count, 1) / n), -np.inf)
        balanced = self.fitness == "balanced_acc"
        dev_counts = np.bincount(yd, minlength=C).astype(np.float64)
        if self.probe == "lda":
            within = G - (count[:, None, None] * mu[:, :, None] * mu[:, None, :]).sum(0)
            cov = within / n  # the maximum-likelihood pooled covariance
            lam = float(self.shrinkage)
            diag = np.diag(cov).copy()

            def weights(S):
                sub = cov[np.ix_(S, S)]
                target = diag[S].mean() if len(S) else 1.0
                sub = (1.0 - lam) * sub + lam * target * np.eye(len(S))
                M = mu[:, S]  # [C, k]
                A = np.linalg.solve(sub, M.T)  # [k, C]
                b = -0.5 * np.einsum("ck,kc->c", M, A) + (0.0 if balanced else log_prior)
                return A, b
        else:
            m = sums_pool.sum(0) / n
            Gc = G - n * np.outer(m, m)
            Y = sums_pool - count[:, None] * m[None, :]  # [C, P] = Z^T (Y - mean Y) for one-hot Y
            ridge = float(self.alpha) * n

            def weights(S):
                A = np.linalg.solve(Gc[np.ix_(S, S)] + ridge * np.eye(len(S)), Y[:, S].T)  # [k, C]
                b = count / n - m[S] @ A
                return A, b

        loglik = self.fitness == "loglik"
        rows = np.arange(len(yd))
        XdT = np.ascontiguousarray(Xd.T)  # [P, dev]: a subset's rows are one contiguous gather each

        def score(S: np.ndarray) -> float:
            try:
                A, b = weights(S)
            except np.linalg.LinAlgError:
                return -np.inf
            out = A.T.astype(np.float32) @ XdT[S] + b.astype(np.float32)[:, None]  # [C, dev]
            if loglik:
                out = out.astype(np.float64)
                out -= out.max(axis=0, keepdims=True)
                return float(np.mean(out[yd, rows] - np.log(np.exp(out).sum(axis=0))))
            pred = np.argmax(out, axis=0)
            hit = pred == yd
            if balanced:
                per = np.bincount(yd[hit], minlength=C) / np.maximum(dev_counts, 1.0)
                return float(per[dev_counts > 0].mean())
            return float(hit.mean())

        return score

    def _search(self, score, P: int, k: int, rng: np.random.Generator, seeds=()):
        pop_size, elite, tsize = int(self.population), int(self.elite), int(self.tournament)
        pm = float(self.mutation) if self.mutation is not None else 1.0 / k
        pc = float(self.crossover)
        cache: dict[bytes, float] = {}
        evals = 0

        def fit(ind: np.ndarray) -> float:
            nonlocal evals
            key = ind.tobytes()
            v = cache.get(key)
            if v is None:
                v = cache[key] = score(ind)
                evals += 1
            return v

        weights = 1.0 / (np.arange(P) + k)
        weights /= weights.sum()
        pop = [np.arange(k, dtype=np.int64)]
        seen = {pop[0].tobytes()}
        for ind in seeds:
            ind = np.sort(np.asarray(ind, dtype=np.int64))
            if len(ind) == k and ind.tobytes() not in seen:
                seen.add(ind.tobytes())
                pop.append(ind)
        tries = 0
        while len(pop) < pop_size and tries < 50 * pop_size:
            tries += 1
            p = weights if len(pop) % 2 else None
            ind = np.sort(rng.choice(P, size=k, replace=False, p=p)).astype(np.int64)
            if ind.tobytes() not in seen:
                seen.add(ind.tobytes())
                pop.append(ind)
        if P == k:
            pop = pop[:1]

        def ranked(population):
            fits = [fit(ind) for ind in population]
            order = sorted(range(len(population)), key=lambda i: (-fits[i], population[i].tobytes()))
            return [population[i] for i in order], [fits[i] for i in order]

        pop, fits = ranked(pop)
        curve = [fits[0]]
        best = (pop[0], fits[0])
        stale, gens = 0, 0
        for gen in range(int(self.generations)):
            if len(pop) < 2:
                break
            gens = gen + 1

            def select():
                idx = rng.integers(0, len(pop), size=tsize)
                return pop[int(idx.min())]  # pop is sorted best first

            nxt = [ind.copy() for ind in pop[:elite]]
            seen = {ind.tobytes() for ind in nxt}
            attempts = 0
            while len(nxt) < pop_size and attempts < 20 * pop_size:
                attempts += 1
                a = select()
                if rng.random() < pc:
                    b = select()
                    common = np.intersect1d(a, b, assume_unique=True)
                    rest = np.setxor1d(a, b, assume_unique=True)
                    fill = rng.choice(rest, size=k - len(common), replace=False) if len(rest) else np.zeros(0, np.int64)
                    child = np.concatenate([common, fill]).astype(np.int64)
                else:
                    child = a.copy()
                flips = np.flatnonzero(rng.random(k) < pm)
                if len(flips):
                    outside = np.setdiff1d(np.arange(P), child, assume_unique=True)
                    nf = min(len(flips), len(outside))
                    if nf:
                        child[flips[:nf]] = rng.choice(outside, size=nf, replace=False)
                child = np.sort(child)
                key = child.tobytes()
                if key in seen:
                    continue
                seen.add(key)
                nxt.append(child)
            pop, fits = ranked(nxt)
            curve.append(fits[0])
            if fits[0] > best[1] + 1e-12:
                best, stale = (pop[0], fits[0]), 0
            else:
                stale += 1
                if stale >= int(self.patience):
                    break
        rounds = int(self.polish)
        if rounds > 0:
            ind, val = best
            for _ in range(rounds):
                ind, val, improved = self._swap_pass(ind, val, fit, P)
                if not improved:
                    break
            if val > best[1] + 1e-12:
                best = (ind, val)
                if all(ind.tobytes() != p.tobytes() for p in pop):
                    pop = pop[:-1] + [ind]
                curve.append(val)
        return best, pop, curve, evals, gens

    @staticmethod
    def _swap_pass(ind: np.ndarray, val: float, fit, P: int) -> tuple[np.ndarray, float, bool]:
        """One sweep of first-improvement swaps (each member against every pool neuron outside, in pool
        order); returns the improved subset, its fitness and whether anything changed."""
        ind = ind.copy()
        improved = False
        for i in range(len(ind)):
            outside = np.setdiff1d(np.arange(P), ind, assume_unique=True)
            for c in outside:
                cand = ind.copy()
                cand[i] = c
                cand = np.sort(cand)
                v = fit(cand)
                if v > val + 1e-12:
                    ind, val, improved = cand, v, True
                    break
        return ind, val, improved
