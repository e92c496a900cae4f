"""Reproducible experiments: measurement into xarray Datasets with provenance, netCDF files, papermill
sweeps on Dask, HoloViews reports and the cost model. The top of the import graph: nothing imports it.
"""
