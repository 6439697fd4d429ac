"""Sphinx configuration for the lowrank_optax documentation (built offline)."""

project = "lowrank_optax"
author = "lowrank_optax developers"
copyright = "2026, lowrank_optax developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
suppress_warnings = ["autodoc.import_object"]
