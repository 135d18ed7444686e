"""FSDP2 (strategies/fsdp2.yaml) in one process on a 1-rank gloo group: what
LatentDiffusionModule.configure_model shards, composed with the LoRA and ActivationCheckpointing
callbacks that run before it; the 2-process training check is the slow test in test_lora_resume.py."""

import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

from lvdm.checkpoints.load import build_module
from lvdm.distributed.activation_checkpointing import checkpointed_blocks, declared_blocks
from lvdm.distributed.fsdp2 import FSDP2Strategy
from lvdm.finetune.lora import is_adapter_key
from lvdm.training.callbacks.ema import EMA
from lvdm.training.callbacks.lora_training import LoRA
from lvdm.training.callbacks.parallel import ActivationCheckpointing
from lvdm.training.callbacks.summary import sample_forward_flops


@pytest.fixture
def mesh():
    """A 1-D CPU device mesh over a 1-process gloo group, destroyed afterwards."""
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    finally:
        dist.destroy_process_group()


def _configured(tiny_hparams, strategy):
    """The tiny module after LoRA and activation checkpointing (callback setup), then configure_model."""
    module = build_module(tiny_hparams())
    trainer = SimpleNamespace(callbacks=[], strategy=strategy)
    LoRA(rank=2).setup(trainer, module, "fit")
    ActivationCheckpointing().setup(trainer, module, "fit")
    module._trainer = trainer
    module.configure_model()
    return module


def test_configure_model_shards_the_blocks_then_each_part_with_lora_and_checkpointing(mesh, tiny_hparams):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    strategy = FSDP2Strategy()
    strategy._device_mesh = mesh
    module = _configured(tiny_hparams, strategy)
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    assert units == [module.denoiser, *declared_blocks(module), module.text_encoder]  # module order; no compressor (no parameters)
    assert checkpointed_blocks(module) == declared_blocks(module)
    assert all(isinstance(p, DTensor) for p in module.parameters())
    module.configure_model()  # Lightning calls it in every fit / validate: nothing is sharded twice
    assert [m for m in module.modules() if isinstance(m, FSDPModule)] == units
    assert sample_forward_flops(module) is None  # the summary's meta forward left FSDP2 half initialised
    loss = module.diffusion_loss({"video": torch.rand(2, 3, 2, 8, 8) * 2 - 1, "caption": ["a red square", "blue"]})
    loss.backward()
    grads = {n for n, p in module.named_parameters() if p.grad is not None}
    assert grads and grads == {n for n, p in module.named_parameters() if p.requires_grad}
    assert all(is_adapter_key(n) for n in grads)  # the frozen base gets none


def test_configure_model_leaves_other_strategies_alone(tiny_hparams):
    from torch.distributed.fsdp import FSDPModule

    module = _configured(tiny_hparams, DDPStrategy())
    assert not any(isinstance(m, FSDPModule) for m in module.modules())


def test_fsdp2_refuses_the_ema_and_tensor_parallelism(mesh):
    from lvdm.distributed.fsdp2 import data_parallel_mesh

    strategy = FSDP2Strategy()
    strategy._device_mesh = mesh
    with pytest.raises(RuntimeError, match="EMA callback does not support FSDP.*FSDP2Strategy.*ddp.yaml"):
        EMA().on_fit_start(SimpleNamespace(strategy=strategy, global_step=0), torch.nn.Linear(2, 2))
    assert data_parallel_mesh(strategy).size() == 1
    two_way = SimpleNamespace(device_mesh={"tensor_parallel": SimpleNamespace(size=lambda: 2)})
    with pytest.raises(ValueError, match="tensor_parallel_size 2 is not supported"):
        data_parallel_mesh(two_way)


def test_the_fragment_builds_plain_data_parallel_fsdp2():
    """Through the CLI's parser (which passes every default, ``tensor_parallel_size`` included): one
    data-parallel rank per process is resolved at setup, tensor parallelism stays off, one checkpoint file."""
    from pathlib import Path

    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    fragment = Path(__file__).resolve().parents[2] / "strategies" / "fsdp2.yaml"
    parser = ArgumentParser()
    parser.add_subclass_arguments(Strategy, "strategy")
    wanted = yaml.safe_load(fragment.read_text())["trainer"]["strategy"]
    strategy = parser.instantiate_classes(parser.parse_object({"strategy": wanted})).strategy
    assert isinstance(strategy, FSDP2Strategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", 1)
    assert strategy._save_distributed_checkpoint is False
