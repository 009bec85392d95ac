"""The agent role (executor): one per GPU host. Inventory, container runtime, doing the work."""
