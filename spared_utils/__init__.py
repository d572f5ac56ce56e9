"""spared_utils."""
