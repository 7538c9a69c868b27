"""Metrics of attribution maps: perturbation (AOPPC, deletion, region fills and ROAD's imputation), localisation, map properties, robustness, similarity, agreement across metrics, their tables."""

__all__ = ['agreement', 'fills', 'localisation', 'perturbation', 'properties', 'robustness', 'scoring', 'similarity', 'tables',
           'tables_text']
