"""The compiled parts; everything else is in pyproject.toml.

- ``modelwire._bpe``: the token counter's byte-pair encoding (required).
- ``modelwire.gateway._spanwire``: the span writer. Optional: without it ``otlp._span``, the
  pure-Python writer that writes the same bytes, is used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("modelwire._bpe", ["src/modelwire/_bpe.c"]),
        Extension(
            "modelwire.gateway._spanwire",
            ["src/modelwire/gateway/_spanwire.c"],
            optional=True,
        ),
    ]
)
