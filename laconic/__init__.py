"""Plumbing every room shares (a leaf: imports nothing but the standard library)."""
