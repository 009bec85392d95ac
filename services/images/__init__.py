"""Container image references and the registries they may name (shared by the api and agent)."""
