"""Reading C and diffs: the parser, the diff model, lock flows, release pairs, RT facts."""
