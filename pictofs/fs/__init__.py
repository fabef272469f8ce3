"""The FUSE adapter: thin fusepy callbacks over the core (``pictofs.core``)."""
