"""Models that adapt to the text in front of them, without retraining.

- **Continuous cache** (Grave et al. 2017): mix the model's next-token distribution with one
  over the tokens that followed similar hidden states in the last N positions.
- **Dynamic evaluation** (Krause et al. 2018): after scoring each segment of the text, take
  an RMS-normalised gradient step on it, decaying towards the trained weights.

Both in evaluation (``lmgen eval --cache N --dynamic --tune-on valid``), and in generation
(``lmgen sample/repl --cache N``: the cache distribution is sampled; ``--adapt``: steps on
the text the user types). The package, by job (each module imports only those above it)::

    cache.py    CacheConfig, NeuralCache (the ring of (h, next token) pairs), TextCache (generation's)
    dynamic.py  DynamicConfig, gradient_statistics (MS_g), Adapter (the adapting copy of the weights)
    score.py    score_pass (one pass, a grid of cache settings at once), evaluate_adaptive
    tune.py     tune_adaptive: the grid on a validation split
    plan.py     AdaptiveRequest, plan_methods: lmgen eval's protocol (tune first, then evaluate)

>>> from lmgen.evaluate import CacheConfig, evaluate_adaptive       # doctest: +SKIP
>>> evaluate_adaptive(model, tokens, cache=CacheConfig(500), batch=1).perplexity  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

# name -> module: imported on first use, so that generation (which needs only cache.py) does not
# load the evaluation modules
_EXPORTS = {
    "CacheConfig": "cache", "NeuralCache": "cache", "TextCache": "cache", "mix": "cache",
    "Adapter": "dynamic", "LiveAdaptation": "dynamic", "DynamicConfig": "dynamic", "GradientStats": "dynamic",
    "gradient_statistics": "dynamic",
    "PassResult": "score", "evaluate_adaptive": "score", "score_pass": "score",
    "Choice": "tune", "Tuning": "tune", "tune_adaptive": "tune",
    "AdaptiveRequest": "plan", "Plan": "plan", "plan_methods": "plan", "training_statistics": "plan",
    "live_adaptation": "plan",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
