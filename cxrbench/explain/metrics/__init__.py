"""Metrics of attribution maps: perturbation (AOPPC, deletion, region fills), localisation, map properties, robustness, similarity, agreement across metrics, their tables."""

__all__ = ['agreement', 'localisation', 'perturbation', 'properties', 'robustness', 'scoring', 'similarity', 'tables',
           'tables_text']
