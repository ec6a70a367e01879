"""Datasets for s3t: the in-memory :class:`Examples`/:class:`Dataset` form and the sources
that produce it (files, saved ``datasets``, packaged real datasets)."""

from s3t.data.builtin import list_builtin
from s3t.data.examples import Dataset, Examples
from s3t.data.sources import load_dataset
from s3t.data.templates import TEMPLATES, format_alpaca

__all__ = ["TEMPLATES", "Dataset", "Examples", "format_alpaca", "list_builtin", "load_dataset"]
