"""``neurolab <verb> [hydra overrides]``: a thin shim from the command line to the task functions.

Each Hydra verb is a primary config in ``conf/`` and a plain function in ``neurolab.tasks`` that
tests call directly. ``neurolab store info|verify|import`` works on stores without Hydra.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal
import sys

from .config import LAUNCHER_PID_ENV, VERSION_BASE, config_dir, die_with_parent, launched_rank

TASKS = {
    "extract": ("neurolab.tasks.extract", "extract", "extract activations of a model over a corpus into a store"),
    "probe": ("neurolab.tasks.probe", "probe", "train a probe on a store + concept, rank neurons, evaluate"),
    "rank": ("neurolab.tasks.rank", "rank", "rank neurons with a corpus-based method (iou, ap, probeless, ...)"),
    "evaluate": ("neurolab.tasks.evaluate", "evaluate", "evaluate a given ranking.json (retrain top/random/bottom, selectivity)"),
    "run": ("neurolab.tasks.run", "run", "the whole pipeline: extract -> probe -> rank -> evaluate -> report"),
    "analyze": ("neurolab.tasks.analyze", "analyze", "groups and similarities: clusters, redundancy, select, similarity, nmf, latent"),
    "benchmark": ("neurolab.tasks.benchmark", "benchmark", "score every registered method on planted neurons (known answers)"),
    "intervene": ("neurolab.tasks.intervene", "intervene", "steer the live model with a ranking's top neurons toward a class"),
    "explain": ("neurolab.tasks.explain", "explain", "one neuron: top contexts, rankings, inputs generated for it"),
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


#: the verb of this command, for the processes a data-parallel run starts: Lightning's launcher starts
#: the other ranks with this program and its Hydra overrides, which do not name the verb
VERB_ENV = "NEUROLAB_CLI_VERB"


def _user_errors() -> tuple[type[BaseException], ...]:
    from .errors import NeurolabError

    return (NeurolabError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    env_verb = os.environ.get(VERB_ENV)
    if env_verb in TASKS and launched_rank() > 0 and (not argv or argv[0] not in TASKS):
        # another rank of a data-parallel run, started by Lightning with this program + the overrides
        argv = [env_verb] + argv
        die_with_parent()
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
    try:
        import hydra
    except KeyboardInterrupt:
        return _interrupted(verb)

    errors = _user_errors()

    @hydra.main(version_base=VERSION_BASE, config_path=config_dir(), config_name=verb)
    def app(cfg):
        try:
            from .tasks.validate import validate

            validate(cfg, verb)  # before the task module (torch, models) is even imported
            if launched_rank() == 0:  # something on the screen before the imports of the task take their time
                from hydra.core.hydra_config import HydraConfig

                logging.getLogger("neurolab").info("neurolab %s: run directory %s", verb,
                                                   HydraConfig.get().runtime.output_dir)
            fn = getattr(importlib.import_module(module), func)
            return fn(cfg)
        except errors as e:
            logging.getLogger("neurolab").debug("user error", exc_info=True)
            sys.stderr.write(f"neurolab {verb}: error: {e}\n")
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    os.environ[VERB_ENV] = verb
    if launched_rank() == 0:
        os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    # keep the program's own path in argv[0]: a data-parallel launcher restarts it for the other ranks
    sys.argv = [sys.argv[0] if sys.argv and sys.argv[0] else "neurolab"] + rest
    installed = threading_main()
    old_handler = signal.signal(signal.SIGINT, _on_sigint) if installed else None
    try:
        app()
    except KeyboardInterrupt:
        return _interrupted(verb)
    except SystemExit as e:
        # ours (130), or another one after Ctrl-C (Lightning exits with 1 once it has shut down)
        if e.code == 130 or (_SIGINT["seen"] and e.code not in (0, None)):
            return _interrupted(verb)
        raise
    finally:
        if installed:
            signal.signal(signal.SIGINT, old_handler if old_handler is not None else signal.default_int_handler)
    return 0


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_SIGINT = {"seen": False}


def _on_sigint(signum, frame) -> None:
    _SIGINT["seen"] = True
    raise KeyboardInterrupt


def _interrupted(verb: str) -> int:
    if launched_rank() > 0:  # the launching process says it once
        return 130
    hint = {"extract": "; rerun the same command to resume from the shards already written"}.get(verb, "")
    sys.stderr.write(f"neurolab {verb}: interrupted{hint}\n")
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
