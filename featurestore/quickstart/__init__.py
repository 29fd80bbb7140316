"""Quickstart helpers: a deterministic synthetic NASCAR Cup season and the pictures drawn from it."""
