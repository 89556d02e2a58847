"""The research's diagnostic, structure-guided inference: caption segments matched to image regions,
no training. One entry point, `diagnose_with(space, dataset, source)`, for every region source:

| source | regions from | encoder passes per image |
|---|---|---|
| `patches`, `values` | cached patch (or value-path) features pooled in each box (regions.py) | 1 (extraction's) |
| `crops`, `crops-resize` | each box encoded on its own, in place on a canvas or resized (crops.py) | 1 + boxes |"""

from __future__ import annotations

from typing import Any

from cache_schemas import DatasetTables, SpaceEmbeddings, VlcacheError

from .regions import Regions, pooled_regions, region_boxes
from .score import diagnose

SOURCES = ("patches", "values", "crops", "crops-resize")


def regions_for(space: SpaceEmbeddings, dataset: DatasetTables, source: str, encoder=None,
                progress: bool = False) -> Regions:
    """The dataset's image regions from `source`; crops reuse `encoder` when given (else load the space's)."""
    if source not in SOURCES:
        raise VlcacheError(f"unknown region source {source!r}; sources: {', '.join(SOURCES)}")
    if source in ("patches", "values"):
        return pooled_regions(space, dataset, source)
    from .crops import crop_regions, encoder_for  # runs the encoder: imported only when asked for

    return crop_regions(encoder or encoder_for(space), dataset, "resize" if source == "crops-resize" else "canvas",
                        progress=progress)


def diagnose_with(space: SpaceEmbeddings, dataset: DatasetTables, source: str, split: str | None = None,
                  encoder=None, progress: bool = False) -> dict[str, Any]:
    """The diagnostic's report (shaped like a head's) with regions from `source`; `progress`: bars on stderr."""
    return diagnose(space, dataset, regions_for(space, dataset, source, encoder, progress), split=split,
                    progress=progress)


__all__ = ["SOURCES", "Regions", "diagnose", "diagnose_with", "region_boxes", "regions_for"]
