"""tessera: collaborative low-communication training on pooled, heterogeneous compute."""

__version__ = "0.1.0"
