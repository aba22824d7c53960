"""Infrastructure shared by every layer: safe file I/O, distributed helpers, user-facing errors."""
