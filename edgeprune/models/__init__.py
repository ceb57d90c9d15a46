"""Model specs, the built-in zoo and the data sets that come with it."""
