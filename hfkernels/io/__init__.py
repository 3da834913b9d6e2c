"""Files in and out: image files, pairing two folders by name, the data-folder layouts train and
eval both read (:mod:`.datasets`), atomic writes and the rule every command that writes follows
(:func:`check_outputs`).

This layer imports nothing of hfkernels but :mod:`hfkernels.core`; every error names the file
(or files) at fault, and nothing is dropped silently.
"""
from .datasets import (
    IR_NAMES,
    VIS_NAMES,
    DataError,
    PairDataset,
    PairSet,
    find_sets,
    fit_size,
    to_uint8,
)
from .files import (
    IMAGE_EXTS,
    OutputError,
    PairingError,
    Pairs,
    atomic_write_bytes,
    atomic_write_json,
    check_output_folder,
    check_outputs,
    check_pair_sizes,
    data_root,
    describe_unmatched,
    header_size,
    is_image,
    is_stream,
    list_images,
    match_pairs,
    read_image,
    read_json,
    read_json_file,
    write_image,
    write_output,
)

__all__ = [
    "IR_NAMES", "VIS_NAMES", "DataError", "PairDataset", "PairSet", "find_sets", "fit_size",
    "to_uint8", "IMAGE_EXTS", "OutputError", "PairingError", "Pairs", "atomic_write_bytes",
    "atomic_write_json", "check_output_folder", "check_outputs", "check_pair_sizes", "data_root",
    "describe_unmatched", "header_size",
    "is_image", "is_stream", "list_images", "match_pairs", "read_image", "read_json", "read_json_file", "write_image",
    "write_output",
]
