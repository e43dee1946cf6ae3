"""Search: score every candidate mode for every head on calibration calls, then solve for a mode map.

With a pipeline, :func:`search` does it all (``result = search(pipe, target_speedup=2.0)``);
:func:`calibrate` returns the scores only. By hand:

::

    scorer = HeadScorer(layout, num_layers, num_heads, metadata={...})
    # for every target attention call of a calibration run (see HeadScorer.attend):
    out = scorer.attend(layer, q, k, v, out_proj=attn.to_out[0].weight, step=step)
    scores = scorer.scores()
    scores.save("scores/")                                    # re-solve later in seconds
    result = solve_budget(ScoreSet.load("scores/"), target_speedup=2.0, dense_warmup_steps=10)
    result.config.save_files("wan-map/"); print(result.summary())
"""

from .candidates import Candidate, candidate_densities, default_candidates
from .runner import DEFAULT_PROMPTS, calibrate, load_prompts, search
from .scores import ScoreSet, load_expert_scores, save_expert_scores
from .scoring import HeadScorer
from .sensitivity import measure_sensitivity
from .solver import (
    ATTENTION_SHARE,
    DEFAULT_FP8_MAX_ERROR,
    DEFAULT_LAMBDA,
    SearchResult,
    default_attention_share,
    dense_step_counts,
    default_epsilon,
    paper_choice,
    rule_units,
    solve_budget,
    solve_mckp,
    solve_choices,
    solve_paper,
)

__all__ = [
    "search",
    "calibrate",
    "load_prompts",
    "DEFAULT_PROMPTS",
    "Candidate",
    "default_candidates",
    "candidate_densities",
    "HeadScorer",
    "ScoreSet",
    "save_expert_scores",
    "load_expert_scores",
    "dense_step_counts",
    "SearchResult",
    "solve_paper",
    "solve_budget",
    "solve_choices",
    "measure_sensitivity",
    "solve_mckp",
    "paper_choice",
    "rule_units",
    "default_epsilon",
    "default_attention_share",
    "DEFAULT_LAMBDA",
    "DEFAULT_FP8_MAX_ERROR",
    "ATTENTION_SHARE",
]
