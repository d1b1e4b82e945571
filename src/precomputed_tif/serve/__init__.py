"""Serving volumes over HTTP to Neuroglancer: one WSGI application, thin server front ends."""

from .app import PrecomputedApp
from .config import Source, load_sources

__all__ = ["PrecomputedApp", "Source", "load_sources"]
