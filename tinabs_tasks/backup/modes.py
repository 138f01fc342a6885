"""The stages of each backup mode, in order, by name (the stage table, backup/table.py, says what
each one is; this list is what status pages need, without loading any stage)."""

MODES = {
    "export": ("snapshot", "skeleton", "disks", "vifs", "export", "cleanup"),
    "sr-copy": ("snapshot", "skeleton", "disks", "vifs", "copy", "metadata", "cleanup"),
    "repo": ("snapshot", "skeleton", "disks", "vifs", "store", "cleanup"),
}
