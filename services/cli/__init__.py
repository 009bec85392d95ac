"""The `gpuworker` command line."""
