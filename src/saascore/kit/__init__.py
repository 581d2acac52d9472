"""Shared plumbing: database, column types, errors, identifiers, time."""
