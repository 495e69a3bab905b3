"""Augmentation as replayable recipes: sampled up front, stored as plain numbers, replayed
bit for bit.

- `ViewSpec`      which op (none | crop-flip | mixup | cutmix | ricap) and its parameters
- `sample_views`  recipes drawn from (seed, sample, view) alone (labelenh.views.sample)
- `Recipes`       a batch of recipes (torch tensors) + compact HDF5 records (`to_struct`)
- `apply_views`   the one function that makes view images and mixed label weights
"""

from labelenh.views.apply import apply_views, gather_and_apply
from labelenh.views.recipes import Recipes, recipe_dtype
from labelenh.views.sample import sample_views
from labelenh.views.spec import MIX_OPS, OPS, ViewSpec

__all__ = ["MIX_OPS", "OPS", "Recipes", "ViewSpec", "apply_views", "gather_and_apply",
           "recipe_dtype", "sample_views"]
