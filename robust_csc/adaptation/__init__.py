"""Test-time adaptation baselines beside lambda tuning: bn-adapt and tent, alone or on top of a lambda setting.

    from robust_csc.adaptation import BNAdapt, Tent, compose
    evaluate(model, suite, ..., lambdas=[None, BNAdapt(prior=0), Tent(), compose(Tent(), "stem=0.5")])

    robust-csc evaluate --checkpoint ... --tta bn-adapt,bn-adapt[N=16],tent,tent+stem=0.5

See robust_csc.adaptation.settings for the names and rules, .batchnorm for
the statistics and .tent for the entropy step.
"""

from robust_csc.adaptation.batchnorm import batch_statistics, batchnorm_layers
from robust_csc.adaptation.settings import (
    ADAM_DEFAULTS,
    SGD_DEFAULTS,
    BNAdapt,
    Composed,
    Tent,
    adaptation_of,
    compose,
    parse_setting,
    parse_settings,
    prepare_settings,
)
from robust_csc.adaptation.tent import softmax_entropy

__all__ = [
    "ADAM_DEFAULTS", "BNAdapt", "Composed", "SGD_DEFAULTS", "Tent", "adaptation_of", "batch_statistics",
    "batchnorm_layers", "compose", "parse_setting", "parse_settings", "prepare_settings", "softmax_entropy",
]
