"""The store's schema version: MAJOR.MINOR.

MINOR grows when the layout gains something old readers can ignore (a new optional column or array);
MAJOR grows when old readers would misread the store. A reader refuses an unknown MAJOR."""

from .errors import SchemaVersionError

# 1.1: spaces/<key>/index/ (optional; 1.0 readers ignore it). 1.2: arrays name their dimensions
# (dimension_names) and describe themselves (attribute "description"), so xarray opens them.
# 1.3: the index is segments listed by index/<kind>.json (1.2 readers find no index/<kind>.parquet
# they can trust, or an older one, and read the commit records instead); a plan file covers
# consecutive shards. 1.4: items have optional url and key columns (where the source says).
# 1.5: the arrays of spaces created since end each chunk's codecs with crc32c, checked as zarr decodes it
# (any zarr v3 reader, a 1.4 vlcache included, decodes them); older spaces keep the codecs they had.
SCHEMA_VERSION = "1.5"


def parse_schema_version(value: object) -> tuple[int, int]:
    """Return (major, minor) of a store's version, refusing one this code cannot read."""
    if not isinstance(value, str) or value.count(".") != 1:
        raise SchemaVersionError(f"store has no valid schema_version (found {value!r})")
    major, minor = value.split(".")
    if not (major.isdigit() and minor.isdigit()):
        raise SchemaVersionError(f"store has no valid schema_version (found {value!r})")
    ours = int(SCHEMA_VERSION.split(".")[0])
    if int(major) != ours:
        raise SchemaVersionError(
            f"store schema version {value} is not readable by this vlcache (reads {ours}.x); "
            f"use a vlcache release for schema {major}.x"
        )
    return int(major), int(minor)
