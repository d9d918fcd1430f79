"""Data: tokenizers, the on-disk token store (zarr3 + manifest), preparation, and the grain
batch pipeline. May import core/ and third-party I/O libraries; never models/, gates/ or
another train/ room."""
