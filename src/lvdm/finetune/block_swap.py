"""Block swap: the frozen weights of some backbone blocks live on the host, pure torch.

:func:`enable_block_swap` keeps the frozen parameters (``requires_grad`` False: the base under
LoRA, an FP8 base's weights and scales included; the adapters stay on the compute device) of
the first ``count`` units of the backbone's ``block_class`` (the backbone contract,
:mod:`lvdm.models.contract`) in host memory (pinned when the device is CUDA) and brings each
block in just before it runs:

- forward: a forward pre-hook loads the block (and starts loading the next swapped one on a
  side CUDA stream, so the copy overlaps the current block's compute); a forward hook drops
  the device copy again (the host copy is kept: the weights are frozen, nothing copies back).
- backward: a hook on the block's output gradient loads it again before its backward runs
  (and before its recomputation under activation checkpointing, which runs then); a block's
  device copy is dropped once the block two before it starts its backward (one block of slack
  for the autograd engine's order), and every one left at the end of the backward pass.

On the CPU (device ``cpu``) the moves are no-ops but the hooks and the bookkeeping run, so the
gradients equal those without swap bit for bit (``tests/finetune/test_fp8_block_swap.py``). On
a GPU the autograd graph of a block run without activation checkpointing may keep references
to its device weights until its backward; with ``ActivationCheckpointing`` a block holds none
between its forward and its backward.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from lvdm.distributed.activation_checkpointing import declared_blocks


def swap_blocks(model: nn.Module, count: int) -> list[nn.Module]:
    """The first ``count`` blocks of ``model`` (its declared ``block_class`` units, in module order)."""
    blocks = declared_blocks(model)
    if not 0 <= count <= len(blocks):
        raise ValueError(f"block_swap {count} must be between 0 and the {len(blocks)} blocks "
                         f"({type(blocks[0]).__name__}) of {type(model).__name__}")
    return blocks[:count]


@dataclass
class BlockSwap:
    """The swap state of :func:`enable_block_swap`; ``events`` logs ``(what, block index)``
    (``load`` / ``drop``) when ``record`` is on; :meth:`remove` undoes the swap."""

    blocks: list[nn.Module]
    device: torch.device
    record: bool = False
    events: list[tuple[str, int]] = field(default_factory=list)
    host: list[dict[str, torch.Tensor]] = field(default_factory=list)
    handles: list = field(default_factory=list)
    loaded: list[int] = field(default_factory=list)  # block indices on the device, oldest first
    backward: set[int] = field(default_factory=set)  # loaded for this backward pass
    stream: torch.cuda.Stream | None = None

    def frozen(self, index: int) -> dict[str, nn.Parameter]:
        """Block ``index``'s frozen parameters (an FP8 base's weights and scales among them)."""
        return {n: p for n, p in self.blocks[index].named_parameters() if not p.requires_grad}

    def load(self, index: int, wait: bool = True) -> None:
        if index not in self.loaded:
            self.loaded.append(index)
            self._log("load", index)
            with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
                for name, param in self.frozen(index).items():
                    param.data = self.host[index][name].to(self.device, non_blocking=True)
        if wait and self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for param in self.frozen(index).values():
                param.data.record_stream(torch.cuda.current_stream(self.device))

    def drop(self, index: int) -> None:
        if index in self.loaded:
            self.loaded.remove(index)
            self.backward.discard(index)
            self._log("drop", index)
            for name, param in self.frozen(index).items():
                param.data = self.host[index][name]

    def drop_all(self) -> None:
        for index in list(self.loaded):
            self.drop(index)

    def remove(self) -> None:
        """Take the hooks off and put every swapped parameter on the device for good."""
        for handle in self.handles:
            handle.remove()
        for index in range(len(self.blocks)):
            self.load(index)
        self.handles, self.loaded, self.backward = [], [], set()

    def _log(self, what: str, index: int) -> None:
        if self.record:
            self.events.append((what, index))


def _hooks(swap: BlockSwap, index: int):
    """The forward pre-hook, forward hook and output-gradient hook of block ``index``."""

    def before(module, args):
        swap.load(index)
        if index + 1 < len(swap.blocks) and swap.stream is not None:
            swap.load(index + 1, wait=False)  # prefetch the next one on the side stream

    def on_grad(grad):
        if not swap.backward:  # the first swapped block of this backward: drop what is left at its end
            torch.autograd.Variable._execution_engine.queue_callback(swap.drop_all)
        for done in [i for i in swap.backward if i > index + 1]:  # the block after the next finished its backward
            swap.drop(done)
        swap.load(index)
        swap.backward.add(index)
        if index > 0 and swap.stream is not None:
            swap.load(index - 1, wait=False)
        return grad

    def after(module, args, output):
        if index in swap.backward:  # a recomputation inside the backward: the backward still needs the weights
            return
        swap.drop(index)
        if torch.is_grad_enabled():
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    tensor.register_hook(on_grad)
                    break

    return before, after


def enable_block_swap(model: nn.Module, count: int, device: torch.device | str, record: bool = False) -> BlockSwap:
    """Keep the frozen weights of the first ``count`` blocks of ``model`` on the host and move
    each to ``device`` only while it runs (see the module docstring); return the swap state.

    Args:
        model: a backbone (declares ``block_class``), its frozen parameters already set.
        count: how many blocks to swap (0 to the number of blocks).
        device: the compute device (``cuda``; ``cpu`` runs the bookkeeping with no-op moves).
        record: log every load and drop in ``BlockSwap.events`` (tests).
    """
    blocks = swap_blocks(model, count)
    device = torch.device(device)
    cuda = device.type == "cuda"
    swap = BlockSwap(blocks, device, record, stream=torch.cuda.Stream(device) if cuda else None)
    for index in range(len(blocks)):
        frozen = swap.frozen(index)
        swap.host.append({n: (p.detach().to("cpu").pin_memory() if cuda else p.detach().to("cpu"))
                          for n, p in frozen.items()})
        for name, param in frozen.items():
            param.data = swap.host[index][name]
        before, after = _hooks(swap, index)
        swap.handles += [blocks[index].register_forward_pre_hook(before),
                         blocks[index].register_forward_hook(after)]
    return swap
