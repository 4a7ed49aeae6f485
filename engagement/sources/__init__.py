"""One module per platform: HTTP and parsing into plain dataclasses (sources/base.py), no ORM."""
