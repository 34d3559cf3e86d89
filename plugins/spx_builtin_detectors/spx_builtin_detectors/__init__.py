"""Built-in detectors. The host registers every module listed in ``DETECTORS``."""

from spx_builtin_detectors import gamma_squeeze, level_test, orb, orb_pullback, volume_climax, vwap_reclaim

DETECTORS = [orb, orb_pullback, vwap_reclaim, level_test, volume_climax, gamma_squeeze]
