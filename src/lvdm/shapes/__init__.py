"""The synthetic shapes world: generated videos with known answers, mixed image+video data, and its analytic probe."""
