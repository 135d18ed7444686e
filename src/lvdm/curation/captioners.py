"""Vision-language captioners: a transformers image-text-to-text model, or an OpenAI-compatible
HTTP endpoint. Both take a few frames per clip and return one caption per clip."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from lvdm.curation.frames import Clip, evenly_spaced
from lvdm.curation.hub import LoadedPerWorker, locate_model

__all__ = ["DEFAULT_PROMPT", "format_prompt", "redact", "TransformersCaptioner", "OpenAICaptioner",
           "CaptionRequestError"]

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str, secrets=()) -> str:
    """``text`` with URL credentials (``scheme://user:password@``) and each of ``secrets``
    replaced by ``***``: nothing written to a dataset or printed may carry them."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text

#: The default captioning instruction, after Open-Sora's (reworded): a dense, regenerable
#: description of content, motion and style, in at most six sentences.
DEFAULT_PROMPT = (
    "You are shown {frames} frame(s) taken in order from one video. Describe the video in one detailed "
    "paragraph: the main subjects and their actions, the setting and background, how the camera moves, "
    "and the lighting, colours and visual style. Write it so that a video generation model could recreate "
    "the video from your words alone. Use at most six sentences, describe the video rather than the frames, "
    "and do not begin with 'The video shows'."
)


def format_prompt(template: str, clip: Clip, frames: int) -> str:
    """``template`` with ``{frames}`` (frames shown) and ``{caption}`` (the sample's current
    caption, e.g. as a hint) filled in; other braces are left alone."""
    return template.replace("{frames}", str(frames)).replace("{caption}", clip.caption.strip())


class _Captioner:
    num_frames: int = 3

    def load(self) -> None:
        """Load the model (idempotent; nothing for an HTTP endpoint): called before any sample is
        read and in each worker before its first sample.

        Raises:
            FileNotFoundError: naming the missing local path or the hub id that cannot be had.
        """

    def frame_indices(self, total: int) -> list[int]:
        """Frames shown to the model: ``num_frames`` evenly spaced (1 for an image)."""
        return evenly_spaced(total, self.num_frames)

    def frames(self, clip: Clip) -> list[np.ndarray]:
        return [clip.frames[i] for i in self.frame_indices(clip.total) if i in clip.frames]

    def caption_batch(self, clips: Sequence[Clip]) -> list:
        """One caption (``str``) per clip, or the ``Exception`` that clip's request ended with."""
        raise NotImplementedError


class TransformersCaptioner(LoadedPerWorker, _Captioner):
    """A transformers image-text-to-text model (LLaVA, LLaVA-NeXT, Qwen2-VL…), loaded with
    ``AutoModelForImageTextToText`` / ``AutoProcessor`` from a local folder or a hub id.

    Each clip becomes one user message with its frames as images and the prompt; the
    processor's chat template renders it. Clips are captioned ``batch_size`` at a time with
    greedy decoding (left padding), so a caption depends only on the clip and the model.

    Args:
        model: model folder (``save_pretrained``) or hub id.
        num_frames: frames per clip shown to the model.
        prompt: the instruction (``{frames}`` and ``{caption}`` are filled in).
        max_new_tokens: longest caption, in tokens.
        batch_size: clips per ``generate``.
        device: ``cpu``, ``cuda``…
        dtype: ``float32``, ``bfloat16`` or ``float16``.
    """

    def __init__(self, model: str, num_frames: int = 3, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 200,
                 batch_size: int = 4, device: str = "cpu", dtype: str = "float32") -> None:
        self.model = model
        self.num_frames = num_frames
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    def _build(self):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from lvdm.utils import parse_dtype

        location = locate_model(self.model, "captioning model")
        processor = AutoProcessor.from_pretrained(location)
        model = AutoModelForImageTextToText.from_pretrained(location, dtype=parse_dtype(self.dtype))
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"  # generation continues from the right end of each row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model.to(self.device).eval(), processor

    def prompt_text(self, clip: Clip, frames: int) -> str:
        """The chat-templated prompt of one clip (image placeholders included)."""
        _, processor = self._load()
        content = [{"type": "image"} for _ in range(frames)]
        content.append({"type": "text", "text": format_prompt(self.prompt, clip, frames)})
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def caption_batch(self, clips: Sequence[Clip]) -> list:
        import torch

        model, processor = self._load()
        out: list = []
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size]
            images = [self.frames(clip) for clip in chunk]
            texts = [self.prompt_text(clip, len(frames)) for clip, frames in zip(chunk, images)]
            inputs = processor(images=images, text=texts, padding=True, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                generated = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]
            out += [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
        return out


class CaptionRequestError(RuntimeError):
    """An HTTP caption request that failed after its retries (the message says why)."""


def _jpeg_data_url(frame: np.ndarray, quality: int = 90) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAICaptioner(_Captioner):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, SGLang, LM Studio…): each
    clip is one request whose user message holds the prompt and its frames as JPEG data URLs.

    Requests run ``concurrency`` at a time. A connection error, a timeout, HTTP 429 or a 5xx
    answer is retried up to ``retries`` more times, waiting ``backoff * 2**attempt`` seconds
    between tries; then (or at once, for another 4xx) the clip's caption is a recorded failure,
    never a hang or a crash of the run. Requests go straight to ``base_url`` (``http.client``:
    the ``HTTP(S)_PROXY`` variables are not used).

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is
            appended); ``http://user:password@host/v1`` sends HTTP basic auth (when no API key
            is set). Credentials never appear in messages or written fields (``***``).
        model: the model name the endpoint serves.
        api_key_env: environment variable holding the API key (sent as a bearer token; no
            header when the variable is unset, as local servers expect).
        num_frames: frames per clip sent.
        prompt: the instruction (``{frames}`` and ``{caption}`` are filled in).
        max_tokens: longest caption, in tokens.
        concurrency: requests in flight at once (per worker).
        retries: extra tries of a failed request.
        timeout: seconds one request may take, start to end (a watchdog closes it then).
        backoff: seconds before the first retry (doubling after each).
        temperature: sampling temperature (0: the most repeatable captions).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", num_frames: int = 3,
                 prompt: str = DEFAULT_PROMPT, max_tokens: int = 300, concurrency: int = 4, retries: int = 3,
                 timeout: float = 60.0, backoff: float = 1.0, temperature: float = 0.0) -> None:
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, retries >= 0 and timeout > 0")
        parts = urllib.parse.urlsplit(base_url.rstrip("/") + "/chat/completions")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url {redact(base_url)!r} is not an http:// or https:// URL")
        self.url = redact(base_url.rstrip("/")) + "/chat/completions"  # what messages show
        self._target = (parts.scheme, parts.hostname, parts.port, parts.path + (f"?{parts.query}" if parts.query else ""))
        self._password = urllib.parse.unquote(parts.password or "")
        credentials = f"{urllib.parse.unquote(parts.username or '')}:{self._password}"
        self._basic = base64.b64encode(credentials.encode()).decode("ascii") if parts.username else ""
        self.model = model
        self.api_key_env = api_key_env
        self.num_frames = num_frames
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.temperature = temperature

    def request_body(self, clip: Clip) -> dict:
        """The chat-completions request of one clip."""
        frames = self.frames(clip)
        content = [{"type": "text", "text": format_prompt(self.prompt, clip, len(frames))}]
        content += [{"type": "image_url", "image_url": {"url": _jpeg_data_url(f)}} for f in frames]
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": self.temperature}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self._basic:
            headers["Authorization"] = f"Basic {self._basic}"
        return headers

    def _once(self, body: bytes, headers: dict) -> tuple[int, str, bytes]:
        """One request: ``(status, reason, body)``. A watchdog shuts the socket when ``timeout``
        seconds have passed, so a server that answers a byte at a time cannot hold it longer (a
        socket timeout alone bounds each read, not the request)."""
        import http.client
        import socket
        import threading

        scheme, host, port, path = self._target
        connection = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(
            host, port, timeout=self.timeout)
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            if connection.sock is not None:
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            answer = (response.status, response.reason, response.read())
        except (OSError, http.client.HTTPException):
            if not expired.is_set():
                raise
        finally:
            watchdog.cancel()
            connection.close()
        if expired.is_set():
            raise TimeoutError(f"no complete answer within timeout={self.timeout} s")
        return answer

    def _post(self, body: bytes) -> str:
        import http.client

        headers, last = self._headers(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status, reason, data = self._once(body, headers)
                if status >= 400:
                    last = f"HTTP {status} {reason}: {data[:200].decode('utf-8', 'replace')}"
                    if status != 429 and status < 500:
                        raise CaptionRequestError(self.redact(f"{self.url} refused the request: {last}"))
                    continue
                return _content(json.loads(data))
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"unreadable answer: {exc}"
        raise CaptionRequestError(self.redact(f"{self.url} failed {self.retries + 1} times; last: {last}"))

    def redact(self, text: str) -> str:
        """``text`` without this endpoint's secrets: URL credentials and the API key."""
        return redact(text, (self._password, os.environ.get(self.api_key_env) or ""))

    def _caption(self, clip: Clip):
        try:
            return self._post(json.dumps(self.request_body(clip)).encode("utf-8"))
        except Exception as exc:  # recorded per clip by the stage
            return exc

    def caption_batch(self, clips: Sequence[Clip]) -> list:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._caption, clips))


def _content(answer: dict) -> str:
    content = answer["choices"][0]["message"]["content"]
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str) or not content.strip():
        raise ValueError("the answer has no caption text")
    return content.strip()
