"""Sparse Iso-FLOP Transformations (Saxena et al. 2023, CerebrasResearch/Sparse-IFT): the sparse
wide layer whose FLOPs equal the dense layer's."""

from __future__ import annotations

import math

from sparsejax._checks import check_choice, check_int, check_sparsity

__all__ = ["iso_flop_width"]


def iso_flop_width(width: int, sparsity: float, *, multiple_of: int = 1,
                   rounding: str = "truncate") -> int:
    """Width of the Sparse-Wide replacement of a dense layer at equal FLOPs.

    When a hidden width ``d`` is scaled by ``k`` (so both the layer's inputs and outputs widen),
    a weight at density ``1 - s`` costs ``k**2 * (1 - s)`` times the dense FLOPs; iso-FLOP means
    ``k = sqrt(1 / (1 - s))`` (Sparse-IFT's "sparse wide"). The result is truncated to a multiple
    of ``multiple_of`` (e.g. a block or N:M group size), as Sparse-IFT truncates ``int(width *
    k)`` (at most the dense FLOPs); ``rounding="nearest"`` rounds instead.

    Args:
        width: the dense width, ``>= 1``.
        sparsity: the sparsity of the wide layer, in ``[0, 1)``.
        multiple_of: make the width a multiple of this (``>= 1``).
        rounding: ``"truncate"`` (Sparse-IFT) or ``"nearest"``.

    Returns:
        the wide width (a Python int ``>= width``).

    Raises:
        ValueError: ``width < 1``, ``multiple_of < 1``, sparsity outside ``[0, 1)``, an unknown
            ``rounding``.
    """
    width = check_int(width, "width", minimum=1)
    multiple_of = check_int(multiple_of, "multiple_of", minimum=1)
    check_sparsity(sparsity)
    check_choice(rounding, "rounding", ("truncate", "nearest"))
    if float(sparsity) >= 1.0:
        raise ValueError(f"`sparsity` must be in [0, 1) (a fully sparse layer has no iso-FLOP "
                         f"width); got {sparsity}.")
    wide = width * math.sqrt(1.0 / (1.0 - float(sparsity)))
    units = math.floor(wide / multiple_of) if rounding == "truncate" else round(wide / multiple_of)
    return max(multiple_of, int(units) * multiple_of)
