"""The median_of_means algorithm."""
