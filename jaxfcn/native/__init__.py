"""Native kernels that XLA calls through its FFI, compiled on first use (:mod:`jaxfcn.native.onednn`)."""
