"""Descriptive corpus: imaging features of each scan, turned into faithful structured text."""
