"""The notifications service of the e-commerce example."""
