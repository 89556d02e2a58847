"""The vlcache store's contract: versioned layout, embedding-space specs, table schemas, the
read API (`open_store`) and the validator (`verify`). Depends on zarr, pyarrow and fsspec only,
so the trainer and notebooks read a store without torch or open_clip."""

from .chunk_cache import ChunkCache
from .embeddings import SpaceEmbeddings, checksum
from .errors import (
    DamagedMetadataError,
    DatasetConflictError,
    DiskFullError,
    ExportFileError,
    InvalidSourceError,
    InvalidSpecError,
    SchemaVersionError,
    StoreBusyError,
    StoreNotFoundError,
    StoreNotWritableError,
    UnknownDatasetError,
    UnknownSpaceError,
    UnreachableError,
    VlcacheError,
)
from .layout import Geometry
from .location import Location
from .space import EXTRACTION_VERSION, EmbeddingSpace
from .store import DatasetTables, Store, open_store
from .tables import text_hash
from .verify import VerifyReport, verify
from .version import SCHEMA_VERSION
from .writer import SpaceWriter

__all__ = [
    "EXTRACTION_VERSION", "SCHEMA_VERSION", "ChunkCache", "DamagedMetadataError", "DatasetConflictError",
    "DatasetTables", "DiskFullError", "EmbeddingSpace", "ExportFileError", "Geometry", "InvalidSourceError",
    "InvalidSpecError", "Location", "SchemaVersionError",
    "SpaceEmbeddings", "SpaceWriter", "Store", "StoreBusyError", "StoreNotFoundError", "StoreNotWritableError",
    "UnknownDatasetError", "UnknownSpaceError", "UnreachableError", "VerifyReport", "VlcacheError", "checksum",
    "open_store", "text_hash", "verify",
]
