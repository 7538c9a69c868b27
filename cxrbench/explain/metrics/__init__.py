"""Metrics of attribution maps: perturbation (AOPPC, deletion, region fills and ROAD's imputation), localisation, map properties, robustness, similarity, agreement across metrics, their tables (with the trained models as a source of variance), recomputed from a run's per-image scores."""

__all__ = ['across_models', 'agreement', 'fills', 'localisation', 'perturbation', 'properties', 'rescore', 'robustness', 'scoring', 'similarity', 'tables',
           'tables_text']
