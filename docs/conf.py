"""Sphinx configuration: the API reference is built from the docstrings.

Build: ``sphinx-build -W -b html docs docs/_build`` (offline; the test suite
builds it and fails on any warning).
"""

project = "lossjax"
author = "the lossjax authors"
copyright = "2026, the lossjax authors"

extensions = [
    "myst_parser",           # the guide pages are Markdown
    "sphinx.ext.autodoc",    # the API reference, from the docstrings
    "sphinx.ext.napoleon",   # Google-style Args/Returns sections
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
# The docs say `Array` where the signatures say jax.Array, and cite names
# without cross-reference targets (optax, numpy): no nitpicky mode.
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "lossjax"
