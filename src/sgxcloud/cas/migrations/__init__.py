"""Alembic migrations of the CAS database, shipped as package data."""
