"""Everything the deciders role runs that does I/O, apart from the pure deciders it drives.

`services/deciders/` holds only pure `decide`/`evolve` modules (no clock, no network): they are
what property tests drive. Here live the processes around them: the runner that loads aggregates,
decides and appends (`runner`), the NATS command server (`server`), the fleet view that follows
hosts (`fleet_view`), and the process managers that react to events and send commands of their
own (`placement_service`, `gpu_releaser`, `host_monitor`)."""
