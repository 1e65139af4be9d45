"""Loading models and tokenizers, hook sites, and interventions on the live model.

>>> from omegaconf import OmegaConf
>>> from neurolab.models import load_model
>>> model, tok = load_model(OmegaConf.create({"name_or_path": "all-MiniLM-L6-v2"}))  # doctest: +SKIP
"""
from .loading import load_model, model_identity, model_max_length, resolve_name_or_path
from .sites import Site, resolve_sites, site_table

__all__ = [
    "load_model", "model_identity", "model_max_length", "resolve_name_or_path", "Site", "resolve_sites", "site_table",
]
