"""Inputs of the three tasks: bandwidth traces (ABR), head-movement traces (VP), job DAGs (CJS): readers,
generators and the project's splits of the reference data sets."""
