"""The notebook engine: what the Colab notebooks call (open a run or an HF pair, figures,
resets with selectors, before/after evaluation, an optional ipywidgets panel)."""
