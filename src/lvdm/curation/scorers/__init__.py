"""Scorers for ``lvdm data score``, behind one interface (:class:`Scorer`), by name."""

from lvdm.curation.scorers.base import Scorer
from lvdm.curation.scorers.clip import AestheticScorer, ClipMatchScorer
from lvdm.curation.scorers.duplicates import DuplicateScorer
from lvdm.curation.scorers.motion import MotionScorer
from lvdm.curation.scorers.ocr import OCRScorer
from lvdm.curation.scorers.rules import RulesScorer

__all__ = ["SCORERS", "Scorer", "AestheticScorer", "ClipMatchScorer", "DuplicateScorer", "MotionScorer",
           "OCRScorer", "RulesScorer"]

#: Scorer classes by the name ``lvdm data score --scorers`` uses.
SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in (
    MotionScorer, OCRScorer, DuplicateScorer, RulesScorer, AestheticScorer, ClipMatchScorer)}
