"""The package version (pyproject.toml says the same; tests/test_packaging.py checks they agree)."""
__version__ = "0.1.0"
