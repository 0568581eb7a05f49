"""Data layer: scans, atlases, the on-disk cohort store, ingest, preprocessing, simulation, splits."""

from fmrilm.data.atlas import Atlas, load_atlas
from fmrilm.data.cohort import Cohort, CohortWriter
from fmrilm.data.scan import Scan

__all__ = ["Atlas", "Cohort", "CohortWriter", "Scan", "load_atlas"]
