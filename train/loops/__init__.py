"""loops (map written in the split)."""
