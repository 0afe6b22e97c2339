"""Build script. Metadata lives in pyproject.toml; this file adds the compiled modules."""
from setuptools import setup

setup()
