"""Lathe's container images: content keys, per-image locks, the private dockerd, built tars."""
