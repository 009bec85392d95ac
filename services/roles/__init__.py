"""Each role's entry point: what `gpuworker <role>` runs until SIGINT/SIGTERM."""
