"""OCR text area: the fraction of the frame covered by detected text (RapidOCR, ONNX Runtime)."""

from __future__ import annotations

import numpy as np

from lvdm.curation.frames import Clip, resize_short_side
from lvdm.curation.scorers.base import Scorer

__all__ = ["OCRScorer"]


class OCRScorer(Scorer):
    """Fraction of the frame area inside detected text boxes, the largest over the sampled
    frames (a caption burnt in for a second still spoils the clip). Uses rapidocr-onnxruntime,
    whose wheel ships its detection and recognition models, so it works offline.

    Writes ``ocr_area`` (0 to 1; boxes are unioned on a mask, so overlaps count once) and
    ``ocr_boxes`` (text boxes found in that frame).

    Args:
        num_frames: evenly spaced frames examined per clip.
        short_side: frames are downscaled to this shorter side first (text detection at
            ~512 px finds subtitles and logos and costs a quarter of full HD).
        min_confidence: boxes whose recognised text scores below this are ignored.
    """

    name = "ocr"
    fields = ("ocr_area", "ocr_boxes")

    def __init__(self, num_frames: int = 3, short_side: int = 512, min_confidence: float = 0.5) -> None:
        self.num_frames = num_frames
        self.short_side = short_side
        self.min_confidence = min_confidence
        self._engine = None

    def __getstate__(self):  # the ONNX sessions are built again on each worker
        return {**self.__dict__, "_engine": None}

    def load(self) -> None:
        self._ocr()

    def _ocr(self):
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            # detect at the size given (the default upsizes the shorter side to 736 px: 3x slower)
            self._engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, det_limit_type="max",
                                    det_limit_side_len=2 * self.short_side)
        return self._engine

    def text_boxes(self, frame: np.ndarray) -> list[np.ndarray]:
        """Text boxes (``[4, 2]`` corner points, pixels of ``frame``) found in an RGB frame."""
        result, _ = self._ocr()(np.ascontiguousarray(frame[..., ::-1]), use_cls=False)  # RapidOCR takes BGR like OpenCV
        return [np.asarray(box, dtype=np.float32) for box, _text, conf in (result or [])
                if float(conf) >= self.min_confidence]

    def score(self, clip: Clip) -> dict:
        import cv2

        best_area, best_boxes = 0.0, 0
        for frame in self.frames(clip):
            frame = resize_short_side(frame, self.short_side)
            boxes = self.text_boxes(frame)
            mask = np.zeros(frame.shape[:2], np.uint8)
            for box in boxes:
                cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
            area = float(mask.mean())
            if area > best_area or (area == best_area and len(boxes) > best_boxes):
                best_area, best_boxes = area, len(boxes)
        return {"ocr_area": best_area, "ocr_boxes": best_boxes}
