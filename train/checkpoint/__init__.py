"""checkpoint (map written in the split)."""
