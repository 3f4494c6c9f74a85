"""Demo, stack and throwaway-cluster tooling: used by `pgvigil demo`, the tests and bench/ only.

Live modules never import this package (tests/test_imports.py checks).
"""
