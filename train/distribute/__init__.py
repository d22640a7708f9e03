"""distribute (map written in the split)."""
