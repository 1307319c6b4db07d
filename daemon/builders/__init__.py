"""Locally built model folders (tiny test models, full-size random benchmark models): nothing here serves."""
