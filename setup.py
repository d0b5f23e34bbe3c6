"""The one compiled piece of attnlab: the thin-product kernel of decoding steps.

Everything else is declared in pyproject.toml. The extension is optional: where no C compiler
(or no OpenMP) is found, the install goes on without it and decoding multiplies through
oneDNN instead (``attnlab.functional.kernels.thin.available()`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "attnlab.functional.kernels._thin",
            ["src/attnlab/functional/kernels/_thin.c"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
