"""hubsdd: prune LLM decoder blocks, recover quality with self-data distillation, publish to the Hub.

    from hubsdd import load_recipe, run
    results = run(load_recipe("recipes/smollm2-135m-demo.yaml"), until="prune")
"""

from .core.recipe import Recipe, load_recipe, parse_recipe
from .pipeline.runner import run
from .core.version import __version__

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run", "__version__"]
