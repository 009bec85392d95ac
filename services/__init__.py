"""GPUWorker's running parts: api, deciders, projector roles and the CLI that starts them."""
