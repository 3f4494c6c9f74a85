"""Helpers shared by the query-pack and example tests."""
