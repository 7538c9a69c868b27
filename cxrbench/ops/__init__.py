"""Running the study: profiles, the CI gate and its spread, the ablation ladder, the GPU bundle, the stage dependency check."""

__all__ = ['ablation', 'ablation_table', 'bundle', 'deps', 'gate', 'ladder', 'paired', 'profiles', 'spread']
