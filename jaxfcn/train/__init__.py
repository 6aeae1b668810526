"""jaxfcn.train"""
