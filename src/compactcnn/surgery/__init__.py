"""Physical removal of dead neurons: a smaller dense model, checked for the same outputs."""

from compactcnn.surgery.compaction import compact
from compactcnn.surgery.factorise import FactorisationReport, factorise
from compactcnn.surgery.outcome import CompactionReport, GroupOutcome

__all__ = ["CompactionReport", "FactorisationReport", "GroupOutcome", "compact", "factorise"]
