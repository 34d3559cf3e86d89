"""Built-in detectors. The host registers every module listed in ``DETECTORS``."""

from spx_builtin_detectors import orb, vwap_reclaim

DETECTORS = [orb, vwap_reclaim]
