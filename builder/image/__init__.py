"""Writing SD card images: the cached base, and each node stamped onto a copy."""
