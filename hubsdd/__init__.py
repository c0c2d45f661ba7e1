"""hubsdd: prune LLM decoder blocks, recover quality with self-data distillation, publish to the Hub.

    from hubsdd import load_recipe, run
    results = run(load_recipe("recipes/smollm2-135m-demo.yaml"), until="prune")
"""

__version__ = "0.2.0"

from .recipe import Recipe, load_recipe, parse_recipe  # noqa: E402
from .runner import run  # noqa: E402

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run", "__version__"]
