"""export (map written in the split)."""
