"""Bilevel machinery: Hessian-vector operators, linear solvers and the implicit upper-level gradient."""

from bissl.bilevel.hvp import (
    HVP_MODES,
    HessianVectorOperator,
    differentiable_attention,
    flat_parameters,
    frozen_bn_stats,
    hessian_vector_operator,
    untracked_bn_stats,
)
from bissl.bilevel.implicit import UpperGradients, inverse_jacobian_product, upper_gradients
from bissl.bilevel.solvers import SOLVERS, SolveResult, cg, exact, identity, neumann

__all__ = [
    "HVP_MODES",
    "SOLVERS",
    "HessianVectorOperator",
    "SolveResult",
    "UpperGradients",
    "cg",
    "differentiable_attention",
    "exact",
    "flat_parameters",
    "frozen_bn_stats",
    "hessian_vector_operator",
    "identity",
    "inverse_jacobian_product",
    "neumann",
    "untracked_bn_stats",
    "upper_gradients",
]
