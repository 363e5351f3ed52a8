"""Cluster model shared by every process: the view of live nodes and placement.

Pure values and functions, no I/O: the supervisor's membership agent builds
views from the store, every child receives them and places rooms with the
same function.
"""
