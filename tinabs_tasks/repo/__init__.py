"""The deduplicating, compressed, encrypted backup repository (DESIGN.md section 7)."""
