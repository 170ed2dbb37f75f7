"""Writing an image to an SD card and checking it landed."""
