"""Build autonumad._numa_ext (cffi API mode) from numa_ext.h and numa_ext.c, linking libnuma.

setup.py names `ffibuilder` here through `cffi_modules`: `pip install -e .` builds the
module and puts it next to the package's sources (run it again after editing the C).
The cdef is the marked section of numa_ext.h, so the declarations live in one real
header that the C file includes too.
"""

import os
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "numa_ext.h")
SOURCE = os.path.join(HERE, "numa_ext.c")
MISSING_HEADERS = "libnuma headers not found: install libnuma-dev (Debian/Ubuntu) or numactl-devel (Fedora/RHEL)"
MISSING_COMPILER = "no working C compiler found: install gcc (Debian/Ubuntu: build-essential)"


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def cdef_section(header: str) -> str:
    """The declarations between the cffi-cdef markers of the header."""
    begin = header.index("/* cffi-cdef-begin */") + len("/* cffi-cdef-begin */")
    return header[begin : header.index("/* cffi-cdef-end */")]


def preprocesses(text: str) -> bool:
    """Whether the C preprocessor the build will use accepts `text`."""
    import setuptools  # noqa: F401  (supplies distutils where the standard library no longer does)
    from distutils.ccompiler import new_compiler
    from distutils.errors import CompileError
    from distutils.sysconfig import customize_compiler

    compiler = new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w", encoding="ascii") as f:
            f.write(text)
        try:
            compiler.preprocess(probe, os.path.join(tmp, "probe.i"))
        except CompileError:
            return False
    return True


def require_numa_headers() -> None:
    """Stop the build with a plain message naming what to install when numa.h is missing."""
    if preprocesses("#include <numa.h>\n#include <numaif.h>\n"):
        return
    if not preprocesses("#include <stddef.h>\n"):
        sys.exit(MISSING_COMPILER)
    sys.exit(MISSING_HEADERS)


require_numa_headers()
ffibuilder = FFI()
ffibuilder.cdef(cdef_section(read(HEADER)))
ffibuilder.set_source(
    "autonumad._numa_ext",
    read(SOURCE),
    include_dirs=[HERE],
    libraries=["numa"],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra"],
    depends=[HEADER, SOURCE],
)

