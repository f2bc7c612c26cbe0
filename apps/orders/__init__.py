"""The orders service of the e-commerce example."""
