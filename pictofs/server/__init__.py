"""The reference server: the Pictograph developer API (protocol §4, §5) on FastAPI + SQLite.

Layout:

- ``run``: process life (first start, sockets, ``server.json``, signals, the sweep of expired
  uploads) and the admin verbs the CLI calls (``serve``, ``create_org``, ``create_key``,
  ``list_keys``, ``revoke_key``, ``stop``).
- ``app``: ``create_app`` wires the state, middleware, error handlers and route modules.
- ``routes_datasets``, ``routes_images``, ``routes_uploads``, ``routes_batch``: thin handlers
  (parse, one domain call, render), with ``schemas`` for every body and response.
- ``deps`` (state, caller, roles), ``middleware`` (request id, metrics, the key checked before
  the body, body-size limits), ``handlers`` (the error body), ``idempotency`` (replayed
  POST/PATCH answers, per API key and request), ``failures`` (the one error type).
- ``catalog``, ``folders``, ``ingest``, ``edits``: the domain verbs over the database.
- ``db`` (SQLite), ``blobs`` (content-addressed bytes), ``auth`` (keys, roles, signed upload
  URLs), ``decode`` (the server's only Pillow user), ``rules`` (name rules, checked here and
  never borrowed from the client side).

It shares no code with the API client except ``pictofs.model``.
"""
