"""Reference models and their configs. Side-effect free: no I/O, no global state."""

from tessera.models.lm import ByteLM, ByteLMConfig

__all__ = ["ByteLM", "ByteLMConfig"]
