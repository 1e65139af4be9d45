"""ActivationDataModule: an activation store joined with concept labels (see :mod:`.datamodule`)."""
from .datamodule import OTHER, SPLITS, ActivationDataModule, build_datamodule
from .plan import make_plan
from .reader import RowReader
from .sites import select_sites

__all__ = ["ActivationDataModule", "build_datamodule", "select_sites", "make_plan", "RowReader", "SPLITS", "OTHER"]
