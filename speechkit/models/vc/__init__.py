"""Voice conversion (MeanVC-style): the model and its files."""
