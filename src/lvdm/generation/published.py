"""A published model's diffusers pipeline folder as the module ``lvdm sample`` runs:
``lvdm sample FOLDER --preset NAME`` samples a ``WanPipeline``, ``HunyuanVideoPipeline`` or
``LTXPipeline`` folder the way the preset's source does (its transformer through lvdm's backbone,
its VAE as the compressor, its text encoder(s) as the preset reads them, the preset's sampler)."""

from __future__ import annotations

import json
from pathlib import Path

#: preset → the diffusers pipeline whose folders it reads.
PIPELINES = {"wan2.1-t2v-1.3b": "WanPipeline", "hunyuanvideo": "HunyuanVideoPipeline", "ltx-video-2b": "LTXPipeline"}
#: backbone → its loader in lvdm.models.presets.
_LOADERS = {"WanBackbone": "from_diffusers_wan", "LTXBackbone": "from_diffusers_ltx", "MMDiT": "from_diffusers"}


def is_pipeline_folder(path: str) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (it holds ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def is_pipeline_id(path: str) -> bool:
    """Whether ``path`` reads as a hub id (``owner/name``) and names nothing on disk: a pipeline
    repository that diffusers and transformers fetch (or find in the hub cache)."""
    from lvdm.models.presets import _is_hub_id

    return _is_hub_id(path) and not Path(path).exists()


def module_from_pipeline(folder: str, preset: str):
    """A :class:`~lvdm.training.module.LatentDiffusionModule` (eval mode) of the pipeline folder
    ``folder`` (or hub id, e.g. ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``) of preset ``preset``
    (:data:`PIPELINES`), sampled as the preset's source does
    (:meth:`~lvdm.training.module.LatentDiffusionModule.use_sampler_defaults`); its default size is
    the source's. The transformer's weights load strictly (safetensors)."""
    from lvdm.compressors.video_vae import VideoVAECompressor
    from lvdm.models import presets
    from lvdm.training.module import LatentDiffusionModule

    if preset not in PIPELINES:
        raise ValueError(f"--preset {preset} cannot read a diffusers pipeline folder ({folder}); presets that can: "
                         f"{sorted(PIPELINES)}")
    index = Path(folder) / "model_index.json"
    found = json.loads(index.read_text()).get("_class_name") if index.is_file() else PIPELINES[preset]
    if found != PIPELINES[preset]:
        raise ValueError(f"{index} is a {found!r}; --preset {preset} reads a {PIPELINES[preset]!r} folder")
    chosen, compressor = presets.from_name(preset), VideoVAECompressor(folder, subfolder="vae")
    subfolder = "transformer" if is_pipeline_id(folder) else None  # a local folder finds its transformer/
    if chosen.backbone == "LTXBackbone":  # its RoPE scale reads the VAE's compression, as LTXPipeline's does
        ratios = (compressor.time_downsample, compressor.spatial_downsample, compressor.spatial_downsample)
        denoiser = presets.from_diffusers_ltx(folder, subfolder, compression=ratios)
    else:
        denoiser = getattr(presets, _LOADERS[chosen.backbone])(folder, subfolder)
    size = chosen.sampler.size or (1, 64, 64)
    module = LatentDiffusionModule(denoiser.eval(), chosen.sampler.build_text_encoder(folder),
                                   compressor=compressor, sample_shape=size)
    module.use_sampler_defaults(chosen.sampler)
    return module.eval()
