"""``tqdm.auto`` without its "IProgress not found" warning in Jupyter kernels that lack ipywidgets:
tqdm then falls back to the text bar anyway, and the warning would land in every notebook's output."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
