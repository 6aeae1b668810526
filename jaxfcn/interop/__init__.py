"""jaxfcn.interop"""
