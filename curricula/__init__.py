"""The curricula shipped with Shaping, as data files (YAML); see ``README.md`` here.

This folder is a package only so the files install with Shaping:
``shaping.services.curricula.catalog`` loads them with :mod:`importlib.resources`.
"""
