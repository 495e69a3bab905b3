"""Augmentation as replayable recipes: sampled up front, stored as plain numbers, replayed
bit for bit. One module per op under `labelenh.views.ops`; `OPS` is the registry.

- `ViewSpec`      which op, with that op's parameters only (and its base's)
- `sample_views`  recipes drawn from (seed, sample, view) alone (labelenh.views.sample)
- `from_draws`    recipes from explicit values (λ, boxes, offsets, flips)
- `Recipes`       a batch of recipes (torch tensors) + compact HDF5 records (`to_struct`)
- `apply_views`   the one function that makes view images and mixed label weights
"""

from labelenh.views.apply import apply_views, gather_and_apply
from labelenh.views.ops import OPS, get_op
from labelenh.views.recipes import Recipes, from_draws, layout, recipe_dtype
from labelenh.views.sample import sample_views
from labelenh.views.spec import ViewSpec, augments, names_views_of, options_of

__all__ = ["OPS", "Recipes", "ViewSpec", "apply_views", "augments", "from_draws", "gather_and_apply",
           "get_op", "layout", "names_views_of", "options_of", "recipe_dtype", "sample_views"]
