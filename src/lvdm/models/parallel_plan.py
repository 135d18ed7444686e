"""What a model declares so that distributed code can split its token sequence.

Plain data (no ``torch.distributed``): :mod:`lvdm.distributed.plan` reads it and applies the
split with module hooks, so the model's own ``forward`` stays single-device code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SequenceSplit:
    """Where a model's token sequence is cut across the ranks of a sequence-parallel group.

    The tokens entering the first module of ``blocks`` are cut along ``dim`` into equal
    contiguous chunks of whole ``unit`` s (the sequence is ordered so that a unit's tokens are
    adjacent); every block then sees its rank's chunk and the local grid (the first entry of its
    ``grid`` argument divided by the group size); the output of ``gather`` (per token) is joined
    again along ``dim``. A follower of length 1 along ``dim`` is per sample (it broadcasts
    over the units) and stays whole; a tuple follower (position codes) has each tensor cut.

    Args:
        blocks: name of the ``ModuleList`` of blocks that run on the local chunk, or several
            names (spatial and temporal blocks); the first block of the first list cuts. None
            (``()``): a container whose submodules declare the split (Wan 2.2's two experts).
        tokens: name of the blocks' argument holding the token sequence ``[B, N, D]`` (or
            ``[B, t, S, D]``).
        grid: name of the blocks' ``(t, h, w)`` argument; ``t`` is what is divided. None when
            the blocks take no grid: the unit count is then the tokens' length along ``dim``.
        dim: the sequence dimension of the tokens and of every ``follow_split`` input.
        follow_split: other block (and ``gather`` module) arguments cut at the same places as the
            tokens: per-token tensors ``[B, N, ...]`` (masks, per-token timesteps) or per-unit ones
            ``[B, t, ...]`` (per-frame timesteps: the cut is between whole units, so both cut
            alike). An entry ``(name, ndim)`` is cut only when the argument has ``ndim``
            dimensions (an argument that is per sample in its other forms stays whole).
        gather: name of the module whose per-token output is gathered back.
        unit: what one step along ``grid[0]`` of the latent is, for error messages.
        unsupported: ``(attribute, value)`` pairs of the model that forbid the split, with why.
    """

    blocks: str | tuple[str, ...]
    tokens: str
    grid: Optional[str]
    gather: str
    dim: int = 1
    follow_split: tuple[str | tuple[str, int], ...] = ()
    unit: str = "frame"
    unsupported: tuple[tuple[str, str, str], ...] = ()

    @property
    def block_lists(self) -> tuple[str, ...]:
        """The names in ``blocks`` as a tuple."""
        return (self.blocks,) if isinstance(self.blocks, str) else tuple(self.blocks)
