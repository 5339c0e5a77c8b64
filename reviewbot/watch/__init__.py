"""The list watcher and its crash-safe state."""
