"""Foundations every other subpackage uses: params, atomic I/O, runtime, pipeline paths, bootstrap statistics, plotting, checkpoints."""

__all__ = ['bootstrap', 'checkpoints', 'inference', 'io', 'params', 'paths', 'plotting', 'runtime']
