"""Evaluation: the scoring loop over image pairs (:mod:`.scoring`: fusions by name, the
baseline rows, tables, JSON) and the results page (:mod:`.report`).

Layer: imports :mod:`hfkernels.core`, :mod:`hfkernels.metrics`, :mod:`hfkernels.io` and
:mod:`hfkernels.guidance`; never training or the command line.
"""
from .scoring import (
    BASELINES,
    LABELS,
    METHODS,
    PATHS,
    EvaluationError,
    Fusion,
    Pair,
    blend_fusion,
    check_one_path,
    check_path,
    colour_fusion,
    dump_json,
    format_table,
    fused_and_mu,
    guided_fusion,
    json_safe,
    label,
    laplacian_fusion,
    means,
    method,
    out_of_memory,
    pairs_from_dataset,
    pairs_from_files,
    paths_of,
    pyramid,
    score,
    spread_indices,
)

__all__ = [
    "BASELINES", "LABELS", "METHODS", "EvaluationError", "Fusion", "Pair", "colour_fusion", "dump_json",
    "format_table", "fused_and_mu", "guided_fusion", "json_safe", "label", "laplacian_fusion", "means", "method", "out_of_memory",
    "pairs_from_dataset", "pairs_from_files", "score", "PATHS", "paths_of", "blend_fusion", "check_one_path",
    "check_path", "pyramid", "spread_indices",
]
