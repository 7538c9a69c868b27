"""The offline GPU bundle: packing it here (pack), running it on the host (host), the command (cli)."""

__all__ = ['cli', 'host', 'pack']
