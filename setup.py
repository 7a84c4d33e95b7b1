from setuptools import setup

setup(cffi_modules=["cext/build_numa_ext.py:ffibuilder"])
