"""``neurolab <verb> [hydra overrides]``: a thin shim from the command line to the task functions.

Each Hydra verb is a primary config in ``conf/`` and a plain function in ``neurolab.tasks`` that
tests call directly. ``neurolab store info|verify|import`` works on stores without Hydra.
"""
from __future__ import annotations

import importlib
import logging
import sys

from .config import VERSION_BASE, config_dir

TASKS = {
    "extract": ("neurolab.tasks.extract", "extract", "extract activations of a model over a corpus into a store"),
    "probe": ("neurolab.tasks.probe", "probe", "train a probe on a store + concept, rank neurons, evaluate"),
    "rank": ("neurolab.tasks.rank", "rank", "rank neurons with a corpus-based method (iou, ap, probeless, ...)"),
    "evaluate": ("neurolab.tasks.evaluate", "evaluate", "evaluate a given ranking.json (retrain top/random/bottom, selectivity)"),
    "run": ("neurolab.tasks.run", "run", "the whole pipeline: extract -> probe -> rank -> evaluate -> report"),
    "intervene": ("neurolab.tasks.intervene", "intervene", "steer the live model with a ranking's top neurons toward a class"),
}

USAGE = """usage: neurolab <verb> [key=value ...] [-m] [--help]

Neuron-level interpretation of deep NLP models.

verbs:
{verbs}
  store      info|verify|import: inspect, check or import activation stores (neurolab store --help)

`neurolab <verb> --help` shows the Hydra config of a verb; `-m` runs a multirun sweep.
`neurolab run` with no overrides runs the bundled demo end to end.
"""


def _usage() -> str:
    verbs = "\n".join(f"  {v:<10} {d}" for v, (_, _, d) in TASKS.items())
    return USAGE.format(verbs=verbs)


def _user_errors() -> tuple[type[BaseException], ...]:
    from .errors import NeurolabError

    return (NeurolabError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb == "store":
        from .store.cli import main as store_main

        return store_main(rest)
    if verb not in TASKS:
        sys.stderr.write(f"neurolab: unknown verb {verb!r}\n\n{_usage()}")
        return 2
    module, func, _ = TASKS[verb]
    import hydra

    errors = _user_errors()

    @hydra.main(version_base=VERSION_BASE, config_path=config_dir(), config_name=verb)
    def app(cfg):
        fn = getattr(importlib.import_module(module), func)
        try:
            return fn(cfg)
        except errors as e:
            logging.getLogger("neurolab").debug("user error", exc_info=True)
            sys.stderr.write(f"neurolab {verb}: error: {e}\n")
            raise SystemExit(2) from None

    sys.argv = [f"neurolab-{verb}"] + rest
    app()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
