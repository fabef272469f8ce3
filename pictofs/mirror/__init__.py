"""Mirror mode's engine parts: the plan (``plan``), the local scan (``local``), the service's
listing (``remote_tree``), watchdog's events (``events``, ``coalesce``), the state database
(``state``), the engine that carries plans out (``engine``), the session loop (``session``)
and its progress lines (``progress``). They receive their collaborators;
``pictofs.mirroring`` builds them from the options and runs them.
"""
