"""The HTTP contract files shipped with the package: ``openapi.yaml`` and ``schemas/*.json``.

In the repository they live in ``spec/`` (the single source of truth); the entries here are
symbolic links to them, so a source checkout, an editable install and a built wheel (where the
build copies the linked files in) all find them as package data of ``gateway._spec``.
"""
