"""The compiled span writer (``modelwire.gateway._spanwire``); everything else is in pyproject.toml.

Optional: without a C compiler the build goes on without it and ``otlp._span``, the pure-Python
writer that writes the same bytes, is used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "modelwire.gateway._spanwire",
            ["src/modelwire/gateway/_spanwire.c"],
            optional=True,
        )
    ]
)
