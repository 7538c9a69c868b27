"""Metrics of attribution maps: perturbation (AOPPC, deletion, region fills and ROAD's imputation), localisation, map properties, robustness, similarity, agreement across metrics, their tables (with the trained models as a source of variance)."""

__all__ = ['across_models', 'agreement', 'fills', 'localisation', 'perturbation', 'properties', 'robustness', 'scoring', 'similarity', 'tables',
           'tables_text']
