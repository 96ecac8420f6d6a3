"""Fast local compute (a leaf package: tensor code that imports nothing else of fedsim)."""
