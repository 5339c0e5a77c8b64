"""The kernel tree: applying a series away from the checkout, and what is indexed about a tree."""
