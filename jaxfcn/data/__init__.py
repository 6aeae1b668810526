"""jaxfcn.data"""
