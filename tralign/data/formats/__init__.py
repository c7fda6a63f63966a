"""Input formats: each turns one raw row (a JSON object, a Parquet/`datasets` row) into one canonical
record, or raises :class:`BadRow` with the reason. Shared field checks live in :mod:`.fields`."""

from tralign.data.formats.fields import BadRow, Converter, Row, Tally

__all__ = ["BadRow", "Converter", "Row", "Tally"]
