"""The api's proxy to instances' HTTP ports: `/proxy/<instanceId>/<N>/…` (and, when configured,
`<instanceId>-<N>.<domain>`), streaming both ways, WebSockets included, for the owner only.

- `routing`: which instance and port a request names (paths, wildcard hosts) and the URLs shown.
- `targets`: where that port is, if the caller may reach it (never anything but a declared
  `N/http` port of the caller's RUNNING instance, at the address its host reported).
- `http_relay`, `websocket_relay`: the forwarding itself, with limits and byte counts.
- `front`: the ASGI app in front of Litestar that sends proxy requests here."""
