"""Side-by-side benchmarks: tessera against SDPA, FlexAttention and fla, as ratios."""
