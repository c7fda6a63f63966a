"""Test helpers shared by several test files (import as ``from helpers.models import tiny_neox``)."""
