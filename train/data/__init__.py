"""data (map written in the split)."""
