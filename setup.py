"""Build the optional C accelerator for the step hook.

Everything else is declared in pyproject.toml. The extension is optional: when no compiler
is available the build goes on and looptrace uses its pure-Python step hook.
"""

import platform

from setuptools import Extension, setup

ext_modules = []
if platform.python_implementation() == "CPython":
    ext_modules.append(
        Extension("looptrace._speedups", ["src/looptrace/_speedups.c", "src/looptrace/_sampler.c"],
                  depends=["src/looptrace/_sampler.h"], optional=True)
    )

setup(ext_modules=ext_modules)
