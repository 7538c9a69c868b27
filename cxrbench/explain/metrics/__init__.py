"""Metrics of attribution maps: perturbation (AOPPC, deletion, region fills), localisation, map properties, their tables."""

__all__ = ['localisation', 'perturbation', 'properties', 'scoring', 'tables', 'tables_text']
