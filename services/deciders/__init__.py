"""Deciders: one pure `decide`/`evolve` pair per aggregate, and the runner that gives them I/O."""
