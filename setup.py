"""Build hook: compile the aggregator's byte-level core (``services/aggregator/fastcore.pyx``) with Cython.

``fastcore.TickCore`` reads ``ticks`` body bytes, runs the microbar maths on C doubles and holds each
event's msgpack for the tick cache, with no Python object per event. ``services/aggregator/pybars.py`` is
the same API in plain Python (``PyTickCore``) with bit-identical bars; ``services.aggregator.bars`` picks
the compiled core when it imports. Everything else is in pyproject.toml.

The extension is ``optional``: without a C compiler (or without the .pyx in the tree) the install still
succeeds and the plain-Python core runs (``bars.COMPILED`` and the aggregator's status detail say which
one is in use; tests/aggregator/test_aggregator_compiled.py fails when the .pyx is present but the build
silently did not happen).
"""

from pathlib import Path

from setuptools import Extension, setup

FASTCORE = "services/aggregator/fastcore.pyx"

ext_modules = []
if (Path(__file__).parent / FASTCORE).is_file():
    try:
        from Cython.Build import cythonize
    except ImportError:  # build isolation normally provides Cython (pyproject [build-system] requires)
        pass
    else:
        ext_modules = cythonize(
            [
                Extension(
                    "services.aggregator.fastcore",
                    [FASTCORE],
                    optional=True,
                    # IEEE results identical to CPython's: no fused multiply-add contraction
                    extra_compile_args=["-O2", "-ffp-contract=off"],
                )
            ],
            compiler_directives={"language_level": 3},
            quiet=True,
        )

setup(ext_modules=ext_modules)
