"""picluster: one cluster.yaml in, one ready-to-flash SD card image per Raspberry Pi out."""

__version__ = "0.1.0"
