"""Typed errors. Each is also a builtin (FileNotFoundError, ValueError, KeyError) so callers
can catch what they already know; every one is a `VlcacheError`, which the CLI prints as one line."""


class VlcacheError(Exception):
    """A problem the user can fix: shown as a one-line message, never a traceback."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else self.__class__.__name__


class StoreNotFoundError(VlcacheError, FileNotFoundError):
    """No vlcache store at the given URI."""


class StoreNotWritableError(VlcacheError, PermissionError):
    """The store location cannot be created or written."""


class SchemaVersionError(VlcacheError, ValueError):
    """The store was written with a schema this version of vlcache cannot read."""


class UnknownSpaceError(VlcacheError, KeyError):
    """No embedding space with that key (or encoder) in the store."""


class UnknownDatasetError(VlcacheError, KeyError):
    """No dataset with that name in the store."""


class DatasetConflictError(VlcacheError, ValueError):
    """A dataset of that name exists with different content."""


class StoreBusyError(VlcacheError, RuntimeError):
    """Another extraction is writing the same embedding space."""


class InvalidSourceError(VlcacheError, ValueError):
    """A source (file, folder, table) cannot be read as the declared format."""


class InvalidSpecError(VlcacheError, ValueError):
    """A spec, manifest or table does not follow the schema."""


class DamagedStoreError(VlcacheError, OSError):
    """Committed rows that read back missing, undecodable or non-finite: the store is damaged."""


class ExportFileError(VlcacheError, ValueError):
    """An export that cannot be written, or a file that cannot be read as a vlcache export."""
