"""The planted-shortcut study (docs/ground-truth.md): reliance on the tag, localisation, ranking vs AOPPC."""

__all__ = ['common', 'controls', 'localisation', 'ranking', 'reliance', 'run']
