"""Apply a trained run's classifiers to new radiographs: the ``cxrbench predict`` command."""

__all__ = ['apply', 'calibrate', 'cli', 'inputs', 'load', 'overlays', 'readable']
