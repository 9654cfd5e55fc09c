"""Sphinx configuration: Markdown pages (MyST), the API reference from the
package's docstrings (autodoc). Build with ``scripts/docs.sh``."""

project = "hardmix"
author = "hardmix developers"
copyright = "hardmix developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# The inherited docstrings of torch's Sampler carry markup that is not ours.
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# No network at build time: cross-references to Python and torch stay plain.
intersphinx_mapping = {}
nitpicky = False

html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {"description": "a replay sampler that fights forgetting", "fixed_sidebar": True}
