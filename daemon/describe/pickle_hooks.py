"""The BUILD hooks every pickle-based describer scans with (joblib arrays, XGBoost versions)."""

from __future__ import annotations

from collections.abc import Mapping

from .joblib import WRAPPERS, after_wrapper
from .pickle_scan import BuildHook
from .pickle_values import Global
from .xgboost_model import BOOSTER, after_booster

HOOKS: Mapping[Global, BuildHook] = {**dict.fromkeys(WRAPPERS, after_wrapper), BOOSTER: after_booster}
