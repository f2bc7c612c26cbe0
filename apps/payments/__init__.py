"""The payments service of the e-commerce example."""
