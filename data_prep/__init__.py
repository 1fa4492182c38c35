"""Raw interaction logs -> candidate-list prompt datasets."""
