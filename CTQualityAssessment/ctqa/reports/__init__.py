"""What people look at: preview.png (and HTML reports)."""
