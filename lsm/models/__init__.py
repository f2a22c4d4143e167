"""Model families behind one interface; importing this registers all four.

Heavy libraries (xgboost, torch) are imported inside the family modules'
methods, so importing :mod:`lsm.models` stays cheap.
"""

from lsm.models.base import FAMILIES, FAMILY_NAMES, LsmClassifier, get_family, parse_families
from lsm.models.delivered import DeliveredModel
from lsm.models.lr import LogisticModel
from lsm.models.mlp import MLPModel
from lsm.models.rf import RandomForestModel
from lsm.models.xgb import XGBModel

__all__ = ["FAMILIES", "FAMILY_NAMES", "LsmClassifier", "get_family", "parse_families",
           "DeliveredModel", "LogisticModel", "MLPModel", "RandomForestModel", "XGBModel"]
