"""Reading mail: fetching threads from lore, parsing messages, assembling a series."""
