"""Repository tools (not installed with the package): `python tools/readme.py` renders the README's results."""
