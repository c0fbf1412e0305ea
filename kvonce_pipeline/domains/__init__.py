"""The built-in domains, one folder each. Each is registered in the ``kvonce_pipeline.domains``
entry point group (pyproject.toml), exactly as a domain shipped by another package would be."""
