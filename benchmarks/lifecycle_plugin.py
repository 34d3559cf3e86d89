"""Detector plugin used only by benchmarks/lifecycle.py: a long and a short setup around every
closed bar, tight enough that the benchmark's sawtooth price path triggers and resolves them within
seconds (so the lifecycle publishes transitions all the time)."""

from services.detector.hookspecs import API_VERSION, hookimpl


@hookimpl
def spx_detector_describe():
    return {"name": "bench_probe", "family": "bench", "version": "1", "api_version": API_VERSION}


@hookimpl
def spx_detector_on_bar(ctx, bar):
    c = bar.close
    return [{"direction": "long", "entry_low": c - 0.02, "entry_high": c + 0.02, "stop": c - 0.30,
             "targets": [c + 0.10, c + 0.20], "confidence": 0.5},
            {"direction": "short", "entry_low": c - 0.02, "entry_high": c + 0.02, "stop": c + 0.30,
             "targets": [c - 0.10, c - 0.20], "confidence": 0.5}]
