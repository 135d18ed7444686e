"""Generation: one :class:`Generator` (load a checkpoint once, check a :class:`Request`, read its
given frames, generate, save mp4s) behind ``lvdm sample`` (:mod:`lvdm.generation.sample`) and
``lvdm app`` (:mod:`lvdm.generation.app`)."""

from lvdm.generation.generator import Generator, Limits, Request, read_given, save_videos

__all__ = ["Generator", "Limits", "Request", "read_given", "save_videos"]
