"""The compiled pieces of attnlab: the decoding step's thin products and fused attention, and the
causal attention blocks.

Everything else is declared in pyproject.toml. The extensions are optional: where no C compiler
(or no OpenMP) is found, the install goes on without them and attnlab takes PyTorch's kernels
(``attnlab.functional.kernels.thin.available()``, ``fused_step.available()`` and
``causal.blocks_available()`` say which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            f"attnlab.functional.kernels.{name}",
            [f"src/attnlab/functional/kernels/{name}.c"],
            depends=["src/attnlab/functional/kernels/_avx2.h"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
        for name in ("_thin", "_step", "_causal")
    ]
)
