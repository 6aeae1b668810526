"""jaxfcn.analysis"""
