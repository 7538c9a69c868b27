"""The planted-shortcut study (docs/planted_shortcut.md): reliance on the tag, localisation, ranking vs AOPPC."""

__all__ = ['common', 'localisation', 'ranking', 'reliance', 'run']
