"""The web console: what a customer uses in a browser, served by the api at `/` (under
`/console/`). Server-rendered pages (Jinja) over the REST API's own handlers (`rest.py`), signed in
with a session cookie (services/api/browser_session.py), every form under a CSRF token and an
`Origin` check (`guards.py`), a few static ES modules for live updates and copying; nothing from a
CDN and no build step."""
