"""pictofs: Pictograph image datasets as a filesystem, a mirror, and a reference server."""

__version__ = "0.1.0"
