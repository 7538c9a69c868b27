"""Studies built on trained models: the shortcut audit, the planted shortcut, severity, external validation and predict."""

__all__ = ['audit', 'external', 'planted', 'predict', 'severity']
