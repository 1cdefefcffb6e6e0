"""Networks: H2ASeg, its ablations and the baselines, behind one registry."""

from h2aseg.models.convert import convert_official_state_dict
from h2aseg.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "convert_official_state_dict", "list_models", "register_model"]
