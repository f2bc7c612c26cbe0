"""The inventory service of the e-commerce example."""
