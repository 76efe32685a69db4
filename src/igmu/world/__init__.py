"""The embedded mini world (renderer, captions, DataIGM-mini, training recipes, shipped weights and judges):
a plug-in on top of igmu's core, which must not assume it (see the import-linter contracts in pyproject.toml)."""
