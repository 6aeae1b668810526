"""jaxfcn.reproduce"""
