"""Sphinx configuration for the lowrank_optax documentation.

The site needs no network, neither to build nor to read: the theme
(``sphinx-book-theme``, the optax/Flax one) ships its assets, and MathJax is
bundled into ``_static/mathjax`` by ``sphinx-mathjax-offline`` (both are in the
``test`` extras), so formulas render from a ``file://`` copy of the site.
"""

project = "lowrank_optax"
author = "lowrank_optax developers"
copyright = "2026, lowrank_optax developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # copies MathJax 3 into the build, no CDN
    "sphinx.ext.viewcode",
]

# API reference: short names (lowrank.galore is shown as galore), plain
# signatures; the Args sections say what each argument is.
add_module_names = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_class_signature = "separated"
toc_object_entries_show_parents = "hide"
python_display_short_literal_types = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
nitpicky = False
suppress_warnings = ["autodoc.import_object"]

html_theme = "sphinx_book_theme"
html_title = "lowrank_optax"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "show_navbar_depth": 1,
    "use_fullscreen_button": False,
    "use_download_button": False,
    "use_source_button": False,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
html_copy_source = False
pygments_style = "default"
exclude_patterns = ["_build"]
