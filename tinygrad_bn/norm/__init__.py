"""Normalization built twice: staged from primitive ops, and fused with the closed form.

spec.py     where each normalization reduces; argument checks
staged.py   the ten stages of the backprop diagram (prepare.py: their inputs and constants)
fused.py    the closed forms in plain numpy and the fused op
api.py      the public functions
"""

from .api import (
    batchnorm_fused,
    batchnorm_staged,
    groupnorm_fused,
    groupnorm_staged,
    layernorm_fused,
    layernorm_staged,
    norm_fused,
    norm_staged,
    spatial_batchnorm_fused,
    spatial_batchnorm_staged,
)
from .fused import (
    NORMS,
    FusedBatchNorm,
    FusedGroupNorm,
    FusedLayerNorm,
    FusedNorm,
    closed_form_backward,
    fused_node,
    fused_training_node,
    normalize,
    statistics,
)
from .prepare import broadcastable
from .spec import (
    KINDS,
    TITLES,
    NormSpec,
    batchnorm_spec,
    check_eps,
    groupnorm_spec,
    layernorm_spec,
    norm_spec,
    spatial_batchnorm_spec,
)
from .staged import STAGE_NAMES, staged_nodes

__all__ = [
    "STAGE_NAMES", "staged_nodes", "NormSpec", "KINDS", "TITLES", "NORMS", "check_eps",
    "batchnorm_spec", "layernorm_spec", "spatial_batchnorm_spec", "groupnorm_spec", "norm_spec",
    "FusedNorm", "FusedBatchNorm", "FusedLayerNorm", "FusedGroupNorm", "fused_node", "fused_training_node",
    "statistics", "normalize", "closed_form_backward", "broadcastable",
    "batchnorm_staged", "batchnorm_fused", "norm_staged", "norm_fused",
    "layernorm_staged", "layernorm_fused", "spatial_batchnorm_staged", "spatial_batchnorm_fused",
    "groupnorm_staged", "groupnorm_fused",
]
